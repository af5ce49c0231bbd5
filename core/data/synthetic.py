"""A small zero-inflated data set with known dependencies: the embedded default for the quick start,
and ground truth for testing that the dependency statistics find what was planted.

Generative story (per sample t, in file order): a latent log-abundance L[t] = mu + noise; a driver
j of a directed pair pushes its effect i one sample later (L[t, i] += w * z[t-1, j], z the
driver's standardized latent), which is what the lag-1 Granger F of core/deps/fstat.py tests; the
two members of a symmetric pair share a latent factor in the same sample (mutual information,
no lag); a two-level `sample_type` shifts some taxa. Presence is a Bernoulli draw that gets likelier
with L (zero inflation tied to abundance, as in sequencing), and counts are Poisson at a sampled
depth. Drivers, effects and symmetric members are distinct taxa with no autocorrelation, so
the planted edges are the only dependencies apart from the weak coupling that normalization to
relative abundance adds between all taxa.

`kraken_like` adds what wide real tables have besides pairs: taxa in co-varying modules (shared
latent factors, the low-rank structure classical imputers exploit) and a zero fraction set to that
of the Kraken-TCGA genus tables (about 55-60 %), at their size (1,000 x 1,700), for benchmarks and
tests of the model at scale without real data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from depmicro.core.io.atomic import atomic_path
from depmicro.core.data import Dataset
from depmicro.core.errors import DepmicroError

SAMPLE_TYPES = ("Primary Tumor", "Solid Tissue Normal")


@dataclass(frozen=True)
class SyntheticTruth:
    directed: tuple[tuple[int, int], ...]  # (i, j): taxon j at sample t-1 drives taxon i at sample t
    symmetric: tuple[tuple[int, int], ...]  # (a, b), a < b: share a latent factor
    shifted: tuple[int, ...]  # taxa whose abundance depends on the metadata column
    metadata_column: str = "sample_type"


def make_synthetic(n_samples: int = 300, n_taxa: int = 30, seed: int = 0, n_directed: int = 6, n_symmetric: int = 6,
                   metadata: bool = True, n_modules: int = 0, zero_fraction: float | None = None,
                   depth: float = 3000.0) -> tuple[Dataset, SyntheticTruth]:
    """`n_modules` > 0 spreads the taxa outside planted pairs over that many modules sharing a latent
    factor; `zero_fraction` moves the presence threshold until exactly that share of the table is zero
    (Poisson zeros included); `depth` is the median sequencing depth. The defaults draw nothing extra,
    so tables made before these options existed come out unchanged."""
    if n_samples < 10:
        raise DepmicroError(f"synthetic data needs at least 10 samples, not {n_samples}")
    if n_directed < 0 or n_symmetric < 0:
        raise DepmicroError("numbers of planted pairs must be >= 0")
    if n_modules < 0:
        raise DepmicroError(f"number of modules must be >= 0, not {n_modules}")
    if zero_fraction is not None and not 0 < zero_fraction < 1:
        raise DepmicroError(f"zero fraction must be in (0, 1), not {zero_fraction}")
    if not depth > 0:
        raise DepmicroError(f"sequencing depth must be > 0, not {depth}")
    if 2 * (n_directed + n_symmetric) > n_taxa:
        raise DepmicroError(f"{n_taxa} taxa cannot hold {n_directed} directed and {n_symmetric} symmetric disjoint pairs")
    rng = np.random.default_rng(seed)
    taxa = rng.permutation(n_taxa)
    directed = tuple((int(taxa[2 * k + 1]), int(taxa[2 * k])) for k in range(n_directed))
    off = 2 * n_directed
    symmetric = tuple(tuple(sorted((int(taxa[off + 2 * k]), int(taxa[off + 2 * k + 1])))) for k in range(n_symmetric))
    rest = taxa[off + 2 * n_symmetric:]
    shifted = tuple(sorted(int(t) for t in rest[: min(3, len(rest))])) if metadata else ()

    mu = rng.uniform(-0.5, 1.0, n_taxa)
    noise = rng.standard_normal((n_samples, n_taxa))
    L = mu + noise
    for a, b in symmetric:
        f = rng.standard_normal(n_samples)
        L[:, a] += 2.0 * f
        L[:, b] += 2.0 * f
    for i, j in directed:  # drivers are never effects, so this reads each driver's final latent
        z = (L[:, j] - L[:, j].mean()) / L[:, j].std()
        L[1:, i] += 1.5 * z[:-1]
    if n_modules > 0 and len(rest):
        module = rng.integers(0, n_modules, len(rest))
        factors = rng.standard_normal((n_samples, n_modules))
        L[:, rest] += rng.uniform(0.5, 1.5, len(rest)) * factors[:, module]
    kind = rng.integers(0, 2, n_samples)
    for s in shifted:
        L[:, s] += 1.2 * kind
    u = rng.random((n_samples, n_taxa))
    present = u < 1.0 / (1.0 + np.exp(-(L - mu.mean() + 0.3)))
    depths = np.round(np.exp(rng.normal(np.log(depth), 0.5, n_samples)))
    rate = np.exp(L) / np.exp(L).sum(1, keepdims=True) * depths[:, None]
    reads = rng.poisson(rate)
    if zero_fraction is not None:
        present = u < _presence_for(L, u, reads > 0, zero_fraction)
    counts = (reads * present).astype(np.float64)

    obs = [f"s{t:04d}" for t in range(n_samples)]
    var = [f"taxon_{k:02d}" for k in range(n_taxa)]
    meta = pd.DataFrame({"sample_type": [SAMPLE_TYPES[k] for k in kind]}, index=pd.Index(obs, name="sample")) if metadata else None
    ds = Dataset(counts=counts, obs_names=obs, var_names=var, metadata=meta, name="synthetic")
    return ds, SyntheticTruth(directed=directed, symmetric=symmetric, shifted=shifted)


def _presence_for(L: np.ndarray, u: np.ndarray, detected: np.ndarray, zero_fraction: float) -> np.ndarray:
    """Presence probabilities sigmoid(L - c), with c bisected so that the realized table (these
    uniform draws, these Poisson zeros) has `zero_fraction` zeros, to within 1e-4."""
    lo, hi = float(L.min()) - 20.0, float(L.max()) + 20.0
    for _ in range(60):
        c = (lo + hi) / 2
        p = 1.0 / (1.0 + np.exp(-(L - c)))
        frac = 1.0 - float(((u < p) & detected).mean())
        if abs(frac - zero_fraction) < 1e-4:
            break
        lo, hi = (c, hi) if frac < zero_fraction else (lo, c)
    return p


def kraken_like(n_samples: int = 1000, n_taxa: int = 1700, seed: int = 0, zero_fraction: float = 0.57,
                metadata: bool = True) -> tuple[Dataset, SyntheticTruth]:
    """A table shaped like a Kraken-TCGA genus table: 1,000 x 1,700, 57 % zeros, deep sequencing,
    one planted directed pair per 28 taxa and a symmetric one per 14, the other taxa spread over
    n_taxa // 30 modules (about 24 taxa each at 1,700)."""
    n_directed = max(1, n_taxa // 28)
    n_symmetric = max(1, n_taxa // 14)
    return make_synthetic(n_samples=n_samples, n_taxa=n_taxa, seed=seed, n_directed=n_directed, n_symmetric=n_symmetric,
                          metadata=metadata, n_modules=max(1, n_taxa // 30), zero_fraction=zero_fraction, depth=1e5)


def write_synthetic(path: str | os.PathLike, **kwargs) -> Path:
    """Save make_synthetic(**kwargs) as .h5ad (metadata in obs, the planted truth in uns), atomically."""
    import anndata as ad

    ds, truth = make_synthetic(**kwargs)
    path = Path(path)
    if path.suffix != ".h5ad":
        raise DepmicroError(f"{path}: synthetic data is written as .h5ad")
    obs = ds.metadata.copy() if ds.metadata is not None else pd.DataFrame(index=pd.Index(ds.obs_names, name="sample"))
    adata = ad.AnnData(X=ds.counts, obs=obs, var=pd.DataFrame(index=pd.Index(ds.var_names, name="taxon")))
    adata.uns["planted_directed"] = np.asarray(truth.directed, dtype=np.int64).reshape(-1, 2)
    adata.uns["planted_symmetric"] = np.asarray(truth.symmetric, dtype=np.int64).reshape(-1, 2)
    adata.uns["metadata_shifted"] = np.asarray(truth.shifted, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
