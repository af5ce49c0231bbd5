"""The paper's Table II from a study: methods/configs x datasets, mean ± std over seeds.

std is the sample standard deviation (ddof=1), as papers report spread over seeds; with one seed
it is undefined and shown as a dash. Best per dataset and metric is bold in the Markdown table.
"""
from __future__ import annotations

import html as h
import math
from pathlib import Path

import pandas as pd

from depmicro.core.data.evaluation import METRICS, direction
from depmicro.core.io.atomic import atomic_write_text


def summary(results: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Long form: label, kind, dataset, metric, mean, std, n (seeds)."""
    rows = []
    for (label, dataset), g in results.groupby(["label", "dataset"], sort=True):
        for m in metrics:
            v = pd.to_numeric(g[f"test_{m}"], errors="coerce").dropna()
            rows.append({"label": label, "kind": g["kind"].iloc[0], "dataset": dataset, "metric": m,
                         "mean": float(v.mean()) if len(v) else math.nan,
                         "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "n": int(len(v))})
    return pd.DataFrame(rows, columns=["label", "kind", "dataset", "metric", "mean", "std", "n"])


def best_labels(summ: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(label, dataset, metric) of the best mean per dataset and metric (ties all count)."""
    best = set()
    for (dataset, metric), g in summ.dropna(subset=["mean"]).groupby(["dataset", "metric"]):
        target = g["mean"].min() if direction(metric) == "min" else g["mean"].max()
        for label in g.loc[g["mean"] == target, "label"]:
            best.add((label, dataset, metric))
    return best


def _order(summ: pd.DataFrame) -> list[str]:
    """Baselines first (as in the paper), then configs by mean per-microbe PCC, best last."""
    key = summ[summ["metric"] == "pcc_per_microbe"].groupby("label")["mean"].mean()
    kinds = summ.groupby("label")["kind"].first()
    return sorted(key.index, key=lambda lab: (kinds[lab] != "baseline", key[lab] if key[lab] == key[lab] else -1e9, lab))


def wide(summ: pd.DataFrame) -> pd.DataFrame:
    """Numeric Table II for CSV: one row per label, columns `<dataset>/<metric>/mean|std`, plus n."""
    labels = _order(summ)
    cols: dict[str, pd.Series] = {}
    for dataset in sorted(summ["dataset"].unique()):
        for m in METRICS:
            g = summ[(summ["dataset"] == dataset) & (summ["metric"] == m)].set_index("label")
            cols[f"{dataset}/{m}/mean"] = g["mean"]
            cols[f"{dataset}/{m}/std"] = g["std"]
        cols[f"{dataset}/n_seeds"] = summ[(summ["dataset"] == dataset) & (summ["metric"] == METRICS[0])].set_index("label")["n"]
    out = pd.DataFrame(cols).reindex(labels)
    out.index.name = "method"
    return out


def cell(mean: float, std: float, digits: int = 3) -> str:
    if mean != mean:
        return "–"
    mean = round(mean, digits) + 0.0  # no "-0.000"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std == std else f"{mean:.{digits}f} ± –"


def markdown(summ: pd.DataFrame, digits: int = 3) -> str:
    """One Markdown table per metric group: rows = methods, columns = datasets x metrics."""
    labels = _order(summ)
    datasets = sorted(summ["dataset"].unique())
    best = best_labels(summ)
    idx = summ.set_index(["label", "dataset", "metric"])
    header = ["Method"] + [f"{d} {m}" for d in datasets for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lab in labels:
        row = [lab.replace("|", "\\|")]
        for d in datasets:
            for m in METRICS:
                if (lab, d, m) not in idx.index:
                    row.append("–")
                    continue
                r = idx.loc[(lab, d, m)]
                text = cell(r["mean"], r["std"], digits)
                row.append(f"**{text}**" if (lab, d, m) in best else text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def html(summ: pd.DataFrame, digits: int = 3) -> str:
    """The same table as HTML, for the report (best in <b>)."""
    labels = _order(summ)
    datasets = sorted(summ["dataset"].unique())
    best = best_labels(summ)
    idx = summ.set_index(["label", "dataset", "metric"])
    out = ["<table class='t2'><thead><tr><th rowspan=2>Method</th>"]
    out += [f"<th colspan={len(METRICS)}>{h.escape(d)}</th>" for d in datasets]
    out.append("</tr><tr>" + "".join(f"<th>{m}</th>" for _ in datasets for m in METRICS) + "</tr></thead><tbody>")
    for lab in labels:
        out.append(f"<tr><td>{h.escape(lab)}</td>")
        for d in datasets:
            for m in METRICS:
                if (lab, d, m) not in idx.index:
                    out.append("<td>–</td>")
                    continue
                r = idx.loc[(lab, d, m)]
                text = h.escape(cell(r["mean"], r["std"], digits))
                out.append(f"<td><b>{text}</b></td>" if (lab, d, m) in best else f"<td>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def write_tables(summ: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"table_csv": out_dir / "table.csv", "table_md": out_dir / "table.md", "summary_csv": out_dir / "summary.csv"}
    atomic_write_text(paths["table_csv"], wide(summ).to_csv())
    atomic_write_text(paths["table_md"], markdown(summ))
    atomic_write_text(paths["summary_csv"], summ.to_csv(index=False))
    return paths
