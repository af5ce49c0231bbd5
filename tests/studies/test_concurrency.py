"""`max_concurrent_trials` holds for random and grid search, too.

Tune ignores TuneConfig(max_concurrent_trials) when the search algorithm is its variant generator
(it warns and runs as many trials as the CPUs allow); the limit has to go to the generator. A study
that asked for one trial at a time ran two, which made 1-vs-2 concurrency timings meaningless."""
from __future__ import annotations

import mlflow

from tests.conftest import run_study, small_study


def test_random_search_runs_one_trial_at_a_time(tmp_path):
    spec = small_study(tmp_path, "serial", epochs=2, num_samples=2, scheduler="none", baselines=[],
                       search={"algorithm": "random", "seed": 0}, max_concurrent_trials=1)
    summary = run_study(spec, tmp_path, timeout=240)
    assert summary["counts"] == {"TERMINATED": 2}
    mlflow.set_tracking_uri(summary["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["depmicro-serial"], filter_string="tags.`depmicro.kind` = 'trial'")
    spans = sorted(zip(runs["start_time"], runs["end_time"]))
    assert len(spans) == 2
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"two trials overlapped: one ended at {end}, the next started at {start}"
