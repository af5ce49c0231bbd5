"""The DepMicroDiff model: config, token VAE, DAT network, AR orders and masks, metadata encoder,
the user-facing imputer and model bundles. Import from the modules (this package stays import-light:
`depmicro.core.model.config` must not pull in torch)."""
