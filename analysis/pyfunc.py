"""An exported bundle as an MLflow pyfunc model, logged "from code" (this file is the model's code),
so the registry holds no pickle: the weights stay in the bundle's safetensors, loaded through
core/model/bundle.py's load_model, which checks the SHA-256 manifest first.

Input: a pandas DataFrame of raw counts, samples x taxa (columns named like the bundle's taxa,
any order; a leading sample-id column is taken as the index); NaN marks an entry to impute, and with `zeros_missing` zeros do too. Output: the same
frame in the model's normalized space, log10(100 * count / rowsum + 1) with the row sum taken over
the observed entries, where observed entries keep their normalized value and missing ones are imputed.
"""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from depmicro.core.data import normalize
from depmicro.core.errors import DepmicroError
from depmicro.core.model.bundle import load_model


def impute_frame(imputer, counts: pd.DataFrame, zeros_missing: bool = False) -> pd.DataFrame:
    """Impute a counts frame with a loaded DepMicroDiff (see the module docstring)."""
    names = [str(c) for c in counts.columns]
    want = list(imputer.var_names)
    if names and names[0] not in want and set(names[1:]) == set(want):
        counts = counts.set_index(counts.columns[0])  # a CSV read without index: first column = sample ids
        names = names[1:]
    if set(names) != set(want):
        missing = [t for t in want if t not in names]
        extra = [t for t in names if t not in want]
        raise DepmicroError(f"input columns do not match the model's {len(want)} taxa "
                            f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} unknown, e.g. {extra[:1]})")
    frame = counts.copy()
    frame.columns = names
    try:
        X = frame[want].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise DepmicroError("input holds non-numeric values") from None
    if np.isinf(X).any() or (np.nan_to_num(X) < 0).any():
        raise DepmicroError("input counts must be finite and non-negative (NaN marks missing)")
    missing = np.isnan(X) | ((X == 0) if zeros_missing else False)
    observed = ~missing
    Y = normalize(np.where(observed, X, 0.0))
    filled = imputer.impute(Y, observed)
    return pd.DataFrame(filled, index=counts.index, columns=want)


class BundleImputer(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a bundle: artifacts["bundle"] is the exported directory."""

    def load_context(self, context) -> None:
        self.imputer = load_model(context.artifacts["bundle"])
        self.zeros_missing = bool((context.model_config or {}).get("zeros_missing", False))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        zeros = bool((params or {}).get("zeros_missing", self.zeros_missing))
        return impute_frame(self.imputer, pd.DataFrame(model_input), zeros_missing=zeros)


mlflow.models.set_model(BundleImputer())
