"""The review's figures as PNG files (matplotlib, Agg backend: no display on study machines).

Each function writes one figure and returns its path, or None when the study holds nothing to draw
(e.g. no sweep over AR decay), so the report lists only figures that mean something.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    tmp.replace(path)
    return path


def per_microbe_matrix(results: pd.DataFrame, pcc: dict[str, tuple[list[str], np.ndarray]], label: str) -> pd.DataFrame:
    """Taxa x datasets: per-microbe test PCC of `label`, averaged over its seeds (NaN-aware)."""
    cols = {}
    for dataset, g in results[results["label"] == label].groupby("dataset", sort=True):
        series = [pd.Series(pcc[r][1], index=pcc[r][0]) for r in g["run_id"] if r in pcc]
        if series:
            cols[dataset] = pd.concat(series, axis=1).mean(axis=1, skipna=True)
    return pd.DataFrame(cols)


def heatmap(mat: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Fig. 5: per-microbe PCC across datasets; rows sorted by mean PCC, blank where undefined."""
    if mat.empty:
        return None
    plt = _plt()
    mat = mat.loc[mat.mean(axis=1).sort_values(ascending=False).index]
    h = max(3.0, min(0.12 * len(mat) + 1.5, 16.0))
    fig, ax = plt.subplots(figsize=(2.2 + 1.1 * mat.shape[1], h))
    im = ax.imshow(np.ma.masked_invalid(mat.to_numpy(float)), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                   interpolation="nearest")
    ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns])
    step = max(1, len(mat) // 60)
    ax.set_yticks(range(0, len(mat), step), [str(i)[:28] for i in mat.index[::step]], fontsize=5 if len(mat) > 40 else 7)
    ax.set_ylabel("microbe")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="test PCC", shrink=0.6)
    return _save(fig, path)


def boxplots(results: pd.DataFrame, pcc: dict[str, tuple[list[str], np.ndarray]], path: Path) -> Path | None:
    """Fig. 6: distribution over microbes of the per-microbe PCC, one box per method, one panel per dataset."""
    data: dict[str, dict[str, np.ndarray]] = {}
    for (dataset, label), g in results.groupby(["dataset", "label"], sort=True):
        series = [pd.Series(pcc[r][1], index=pcc[r][0]) for r in g["run_id"] if r in pcc]
        if series:
            v = pd.concat(series, axis=1).mean(axis=1, skipna=True).dropna().to_numpy()
            if len(v):
                data.setdefault(dataset, {})[label] = v
    if not data:
        return None
    plt = _plt()
    n = len(data)
    n_labels = max(len(d) for d in data.values())
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, (1.0 + 0.55 * n_labels) * n), 4.2), squeeze=False, sharey=True)
    for ax, (dataset, d) in zip(axes[0], sorted(data.items())):
        labels = sorted(d, key=lambda k: np.median(d[k]))
        ax.boxplot([d[k] for k in labels], showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), [k[:24] for k in labels], rotation=60, ha="right", fontsize=7)
        ax.set_title(dataset)
        ax.axhline(0, color="0.7", lw=0.8)
    axes[0][0].set_ylabel("per-microbe test PCC")
    return _save(fig, path)


def importance_bars(imp: pd.DataFrame, path: Path) -> Path | None:
    if imp.empty:
        return None
    plt = _plt()
    datasets = sorted(imp["dataset"].unique())
    params = list(imp.groupby("param")["importance"].mean().sort_values().index)
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(params) * max(1, len(datasets) / 2) + 1.5))
    width = 0.8 / len(datasets)
    for i, d in enumerate(datasets):
        s = imp[imp["dataset"] == d].set_index("param")["importance"].reindex(params).fillna(0)
        ax.barh(np.arange(len(params)) + i * width, s.to_numpy(), height=width, label=d)
    ax.set_yticks(np.arange(len(params)) + 0.4 - width / 2, params)
    ax.set_xlabel("fANOVA importance (share of variance)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def sweep_plot(sw: pd.DataFrame, param: str, metric: str, path: Path) -> Path | None:
    """Fig. 10 style: metric (mean ± std over trials) against one setting, one line per dataset."""
    if sw.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    numeric = pd.api.types.is_numeric_dtype(sw["value"])
    for dataset, g in sw.groupby("dataset", sort=True):
        g = g.sort_values("value")
        x = g["value"].to_numpy(float) if numeric else np.arange(len(g))
        line = "-" if (g["n"] > 1).any() else ""  # one trial per value (a search): points, not a curve
        ax.errorbar(x, g["mean"], yerr=g["std"].fillna(0), fmt=f"{line}o", capsize=3, label=dataset)
        if not numeric:
            ax.set_xticks(x, [str(v) for v in g["value"]])
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def inference_pareto(df: pd.DataFrame, path: Path) -> Path | None:
    """Validation quality against imputation seconds of every (trial, inference setting), the Pareto
    front per dataset in red (analysis/inference.py builds `df`)."""
    if df.empty:
        return None
    q = next(c for c in df.columns if c.startswith("val_"))
    plt = _plt()
    sets = sorted(df["dataset"].unique())
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], sets):
        g = df[df["dataset"] == ds]
        ax.scatter(g["seconds"], g[q], s=14, color="#999", label="trial x setting")
        front = g[g["pareto"]].sort_values("seconds")
        ax.step(front["seconds"], front[q], where="post", color="#c33", lw=1.5, label="Pareto front")
        ax.scatter(front["seconds"], front[q], s=26, color="#c33")
        for _, r in front.iterrows():
            ax.annotate(r["setting"], (r["seconds"], r[q]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("imputation seconds (validation + test entries)")
        ax.set_ylabel(q)
        ax.set_title(ds)
        ax.legend(fontsize=7)
    return _save(fig, path)
