"""Training: the VAE phase (and its cache), the DAT trainer, and `fit` (train, select by validation, test).

`from depmicro.core.train import fit` keeps working. The module holding `fit` is `fitting`, not
`fit`, so that the package attribute `depmicro.core.train.fit` is the function, never a shadowed module.
"""
from depmicro.core.train.fitting import FitResult, build_imputer, dependency_inputs, fit, train_on_view
from depmicro.core.train.trainer import EpochReport, OnEpoch
from depmicro.core.train.vae_phase import cached_vae_entry, train_vae_entry

__all__ = ["EpochReport", "FitResult", "OnEpoch", "build_imputer", "cached_vae_entry", "dependency_inputs", "fit",
           "train_on_view", "train_vae_entry"]
