"""The confirmation table of a study (studies/confirm.py), read from the parent run's confirm.json:
search-phase and confirmed scores side by side, and the winner by the lower confidence bound."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pandas as pd

from depmicro.analysis.runs import StudyRuns
from depmicro.studies.confirm import ARTIFACT


def load_confirm(study: StudyRuns) -> dict | None:
    if study.parent is None:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study.tracking_uri)
    rid = str(study.parent["run_id"])
    if ARTIFACT not in {a.path for a in client.list_artifacts(rid)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(rid, ARTIFACT, tmp)).read_text())


def frame(table: dict) -> pd.DataFrame:
    key = table["metric"]
    rows = []
    for r in table["rows"]:
        rows.append({"rank": r["rank"], "settings": ", ".join(f"{k}={_short(v)}" for k, v in r["config"].items()),
                     f"search {key}": r[f"search_{key}"], "search n": r["search_n"],
                     f"confirmed {key}": r.get(f"confirm_{key}"), "sd": r.get(f"confirm_{key}_sd"),
                     f"{int(table['level'] * 100)}% bound": r.get(f"confirm_{key}_bound95"),
                     "confirmed n": r["confirm_n"], "winner": r["rank"] == table["winner"]})
    return pd.DataFrame(rows)


def winner_trials(study: StudyRuns, table: dict | None) -> pd.DataFrame | None:
    """The finished search trials of the confirmed winner's configuration (export ships one of them)."""
    if not table or not table.get("winner_config"):
        return None
    fin = study.finished
    mask = pd.Series(True, index=fin.index)
    for k, v in table["winner_config"].items():
        col = fin.get(f"param.{k}")
        if col is None:
            return None
        mask &= col.map(lambda x: _same(x, v))
    return fin[mask]


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return str(a) == str(b)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
