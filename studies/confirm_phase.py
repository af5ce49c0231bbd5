"""The confirmation phase of a study (studies/confirm.py says what and why): a second Tune
experiment, `<name>-confirm` next to the study's, one trial per (configuration, data set, confirm
seed), tracked as child runs of kind schema.KIND_CONFIRM of the same parent run. The configurations are
fixed in the study state the first time the phase starts, so a resumed phase re-runs the same ones.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from ray import tune

from depmicro.studies import schema, tracking, tuner
from depmicro.studies import status as recorded
from depmicro.studies.confirm import ARTIFACT, EXPERIMENT_SUFFIX, confirm_spec, confirm_table, rank_configs
from depmicro.studies.prepare import prepare_data, warm_vae
from depmicro.studies.spec import StudySpec


def choose_points(spec: StudySpec, tracking_uri: str) -> list[dict]:
    st = recorded.recorded_status(spec.name, tracking_uri)
    ranked = rank_configs(st["trials"], list(spec.search_space), spec.metric, spec.mode)[:spec.confirm.top_k]
    return [{"rank": i + 1, "config": r["config"], "search_mean": r["mean"], "search_n": r["n"],
             "search_trial_ids": r["trial_ids"]} for i, r in enumerate(ranked)]


def run_confirmation(spec: StudySpec, storage: Path, tracking_uri: str, exp_id: str, parent: str, points: list[dict],
                     log) -> dict:
    """Train the confirmation trials (restoring a phase a killed driver left), then score them."""
    cspec = confirm_spec(spec)
    shared = prepare_data(cspec, storage / ".dep_cache", log)
    warm_vae(cspec, shared, log)
    exp = storage / f"{spec.name}{EXPERIMENT_SUFFIX}"
    total = len(points) * len(cspec.data_keys)
    if tune.Tuner.can_restore(str(exp)):
        t = tuner.restore_tuner(exp, shared)
    else:
        tracker = tracking.MlflowTracker(cspec, tracking_uri, exp_id, parent, kind=schema.KIND_CONFIRM)
        t = tuner.build_confirm_tuner(cspec, shared, exp, tracker, points)
    log(f"[{spec.name}] confirming the {len(points)} best configuration(s) on held-out seeds "
        f"{list(spec.confirm.seeds)}: {total} trial(s)")
    with contextlib.redirect_stdout(sys.stderr):
        t.fit()
    return score(spec, tracking_uri, exp_id, parent, points)


def score(spec: StudySpec, tracking_uri: str, exp_id: str, parent: str, points: list[dict]) -> dict:
    client = recorded.client_for(tracking_uri)
    runs = [{"rank": int(r.data.tags.get(schema.TAG_CONFIRM_RANK, -1)), "status": r.data.tags.get(schema.TAG_STATUS),
             "metrics": dict(r.data.metrics)} for r in recorded.find_runs(client, exp_id, spec.name, schema.KIND_CONFIRM)]
    table = confirm_table(points, runs, spec.metric, spec.mode)
    table["expected_trials"] = len(points) * len(confirm_spec(spec).data_keys)
    table["finished_trials"] = sum(r["status"] == "TERMINATED" for r in runs)
    client.log_dict(parent, table, ARTIFACT)
    if table["winner"] is not None:
        client.set_tag(parent, schema.TAG_WINNER_RANK, str(table["winner"]))
        client.set_tag(parent, schema.TAG_WINNER_CONFIG, json.dumps(table["winner_config"])[:5000])
    return table
