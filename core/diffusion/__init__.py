"""The diffusion algorithm, apart from the network: noise schedule and samplers' timestep plans."""
