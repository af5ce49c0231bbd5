"""Review figures for the dependency statistics, after the paper's Fig. 1 (top Granger pairs among
high-variance microbes by -log10 p) and Fig. 2 (MI network of the most variable microbes).

They are for a human checking that the matrices look sane before a study thresholds them, so they
favour plain matplotlib (Agg, no display) over styling.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from depmicro.core.io.atomic import atomic_dir, atomic_path
from depmicro.core.io.manifest import write_manifest
from depmicro.core.deps.stats import DepStats
from depmicro.core.errors import DepmicroError
from depmicro.core.io.outputs import PLOTS_KIND


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
    return path


def most_variable(Y: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n taxa with the largest variance (NaN = held out = 0, as in the statistics)."""
    var = np.nanvar(np.where(np.isnan(Y), 0.0, Y), axis=0)
    return np.argsort(-var, kind="stable")[: min(n, Y.shape[1])]


def top_directed_pairs(stats: DepStats, taxa: np.ndarray, k: int = 5) -> list[tuple[int, int, float]]:
    """The k pairs j -> i (both among `taxa`) with the smallest F p-value: (i, j, -log10 p)."""
    sub = np.ix_(taxa, taxa)
    p = np.array(stats.f_pvalue[sub], dtype=np.float64)
    np.fill_diagonal(p, np.inf)
    flat = np.argsort(p, axis=None, kind="stable")[:k]
    out = []
    for f in flat:
        a, b = np.unravel_index(f, p.shape)
        if np.isfinite(p[a, b]):
            out.append((int(taxa[a]), int(taxa[b]), float(-np.log10(max(p[a, b], 1e-300)))))
    return out


def plot_dependencies(stats: DepStats, Y: np.ndarray, out_dir: str | os.PathLike, *, top_pairs: int = 5, n_variable: int = 20,
                      mi_threshold: float = 0.1, alpha: float = 0.05) -> list[Path]:
    """Write fig1_directed.png and fig2_mi_network.png into out_dir; returns their paths.

    Fig. 2 draws an edge where the permutation p <= alpha when p-values were computed, else where
    MI > mi_threshold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise DepmicroError(f"{target}: exists and is not a directory")
    names: list[str] = []

    def fill(out: Path) -> None:
        names.extend(_draw(stats, Y, out, plt, top_pairs=top_pairs, n_variable=n_variable, mi_threshold=mi_threshold,
                           alpha=alpha))
        write_manifest(out, kind=PLOTS_KIND)

    # built aside and renamed into place (a manifest marks it as ours): a failure leaves no half folder
    atomic_dir(target, fill)
    return [target / n for n in names]


def _draw(stats: DepStats, Y: np.ndarray, out: Path, plt, *, top_pairs: int, n_variable: int, mi_threshold: float,
          alpha: float) -> list[str]:
    names = stats.var_names
    taxa = most_variable(np.asarray(Y, dtype=np.float64), n_variable)
    paths = []

    pairs = top_directed_pairs(stats, taxa, top_pairs)
    fig, ax = plt.subplots(figsize=(6, 0.5 * max(len(pairs), 2) + 1))
    labels = [f"{names[j]} \u2192 {names[i]}" for i, j, _ in pairs][::-1]
    ax.barh(labels, [v for *_, v in pairs][::-1], color="tab:blue")
    ax.axvline(-np.log10(alpha), color="grey", ls="--", lw=1, label=f"p = {alpha}")
    ax.set_xlabel("-log10(p), Granger F (cause \u2192 effect)")
    ax.set_title(f"Top directed pairs among the {len(taxa)} most variable taxa")
    ax.legend(loc="lower right")
    paths.append(_save(fig, out / "fig1_directed.png"))
    plt.close(fig)

    sub = np.ix_(taxa, taxa)
    mi = stats.mi[sub]
    edge = (stats.mi_pvalue[sub] <= alpha) if stats.mi_pvalue is not None else (mi > mi_threshold)
    np.fill_diagonal(edge, False)
    angle = 2 * np.pi * np.arange(len(taxa)) / max(len(taxa), 1)
    xy = np.c_[np.cos(angle), np.sin(angle)]
    fig, ax = plt.subplots(figsize=(7, 7))
    top = mi[edge].max() if edge.any() else 1.0
    for a, b in zip(*np.nonzero(np.triu(edge, 1))):
        ax.plot(xy[[a, b], 0], xy[[a, b], 1], color="tab:orange", alpha=0.7, lw=0.5 + 3.5 * mi[a, b] / top, zorder=1)
    ax.scatter(xy[:, 0], xy[:, 1], s=120, color="tab:blue", zorder=2)
    for (x, y), t in zip(xy, taxa):
        ax.annotate(names[t], (x, y), xytext=(1.12 * x, 1.12 * y), ha="center", va="center", fontsize=7)
    rule = f"permutation p <= {alpha}" if stats.mi_pvalue is not None else f"MI > {mi_threshold} nats"
    ax.set_title(f"MI network of the {len(taxa)} most variable taxa ({int(np.triu(edge, 1).sum())} edges, {rule})")
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.axis("off")
    paths.append(_save(fig, out / "fig2_mi_network.png"))
    plt.close(fig)
    return [p.name for p in paths]
