"""The Ray Tune side of a study: `build_tuner` (the study's Tuner, every Tune setting in one
function), `build_confirm_tuner`, `restore_tuner`, and the pieces they use: search space, search
algorithm, scheduler, resources, run config, the time limits and the progress lines. Why each
mapping: see runner.py's docstring."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback
from ray.tune.stopper import Stopper
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Repeater
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from depmicro.studies.spec import StudySpec
from depmicro.studies.tracking import print_line
from depmicro.studies.trainable import SharedData, data_combos, resolve_trial, train_trial


def param_space(spec: StudySpec) -> dict:
    space: dict = {}
    for k, p in spec.search_space.items():
        if p.type == "grid" or (spec.search == "grid" and p.type == "choice"):
            space[k] = tune.grid_search(list(p.values))
        elif p.type == "choice":
            space[k] = tune.choice(list(p.values))
        elif p.type == "uniform":
            space[k] = tune.uniform(p.low, p.high)
        elif p.type == "loguniform":
            space[k] = tune.loguniform(p.low, p.high)
        else:  # int, inclusive bounds
            space[k] = tune.randint(int(p.low), int(p.high) + 1)
    if spec.search != "optuna":
        keys = spec.data_keys
        space["data"] = tune.grid_search(keys) if len(keys) > 1 else keys[0]
        if spec.replicates > 1:
            space["replicate"] = tune.grid_search(list(range(spec.replicates)))
        arms = list(spec.arms)
        space["arm"] = tune.grid_search(arms) if len(arms) > 1 else arms[0]
    return space


def search_alg(spec: StudySpec, warm: list[dict] | None = None):
    """`warm`: configurations (searched fields only) Optuna suggests first (warm_start.py says why
    they are re-run rather than passed with their old scores)."""
    if spec.search != "optuna":
        return variant_generator(spec)
    searcher = OptunaSearch(metric=spec.metric, mode=spec.mode, seed=spec.search_seed, points_to_evaluate=warm or None)
    n = len(data_combos(spec))
    if n > 1:
        searcher = Repeater(searcher, repeat=n)
    return searcher


def variant_generator(spec: StudySpec) -> BasicVariantGenerator:
    """Random and grid search. The concurrency limit goes to the generator itself: Tune ignores
    TuneConfig(max_concurrent_trials) for a SearchGenerator (it warns and runs as many trials as
    the CPUs allow), so a study asking for one trial at a time ran two."""
    return BasicVariantGenerator(random_state=spec.search_seed, max_concurrent=spec.max_concurrent_trials or 0)


def concurrency(spec: StudySpec, alg) -> int | None:
    """TuneConfig's max_concurrent_trials: only for a Searcher (Optuna); the generator holds its own."""
    return None if isinstance(alg, BasicVariantGenerator) else spec.max_concurrent_trials


def scheduler(spec: StudySpec):
    if spec.scheduler.type == "none":
        return None
    return ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs(), grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor, stop_last_trials=False)


def num_samples(spec: StudySpec) -> int:
    return spec.num_samples * len(data_combos(spec)) if spec.search == "optuna" else spec.num_samples


def build_tuner(spec: StudySpec, shared: SharedData, storage: Path, tracker: Callback,
                warm: list[dict] | None = None) -> tune.Tuner:
    """The study's Tuner, every Tune setting in one place: the search space and algorithm (Optuna,
    or Tune's variant generator for random/grid), ASHA, resources per trial, failure retries,
    checkpoints, the per-trial time limit and the session time budget.

    Workers are re-used (`reuse_actors`): a new trial starts in the process of one that ended, which
    saves the worker start-up (about 2 s a trial on a 2-core CPU). The next trial then starts the moment
    one ends, so a driver killed right then leaves an MLflow run for a trial Tune's saved state never
    held; the tracker retires such runs on resume (`MlflowTracker._retire_orphans`)."""
    callbacks = [tracker, progress_callback(spec, spec.n_trials()), TimeBudget(spec.time_budget_s)]
    alg = search_alg(spec, warm)
    return tune.Tuner(
        trainable(shared),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=alg,
                                    scheduler=scheduler(spec), num_samples=num_samples(spec),
                                    max_concurrent_trials=concurrency(spec, alg), reuse_actors=True),
        run_config=run_config(spec, storage, callbacks),
    )


def build_confirm_tuner(cspec: StudySpec, shared: SharedData, exp: Path, tracker: Callback, points: list[dict]) -> tune.Tuner:
    """The confirmation phase's Tuner (`cspec` = confirm.confirm_spec): every chosen configuration on
    every (data set, confirm seed), as a grid in its own experiment `exp`, without early stopping."""
    keys = cspec.data_keys
    space = {"point": tune.grid_search([{"rank": p["rank"], "config": p["config"]} for p in points]),
             "data": tune.grid_search(keys) if len(keys) > 1 else keys[0]}
    rc = run_config(cspec, exp.parent, [tracker, progress_callback(cspec, len(points) * len(keys))])
    rc.name = exp.name
    return tune.Tuner(trainable(shared), param_space=space, run_config=rc,
                      tune_config=tune.TuneConfig(metric=cspec.metric, mode=cspec.mode, num_samples=1,
                                                  search_alg=variant_generator(cspec), reuse_actors=True))


def restore_tuner(exp: Path, shared: SharedData) -> tune.Tuner:
    """The saved Tuner of a stopped study (its settings and callbacks come with it); errored trials run again."""
    return tune.Tuner.restore(str(exp), trainable=trainable(shared), resume_errored=True)


def trainable(shared: SharedData):
    res = {"cpu": shared.spec.resources.cpu, "gpu": shared.spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(train_trial, shared=shared), res)


def run_config(spec: StudySpec, storage: Path, callbacks: list) -> tune.RunConfig:
    return tune.RunConfig(
        name=spec.name, storage_path=str(storage), callbacks=callbacks, verbose=0,
        stop=TrialTimeStopper(spec.max_trial_seconds) if spec.max_trial_seconds else None,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )


# --- budgets ----------------------------------------------------------------------------------

class TrialTimeStopper(Stopper):
    """`max_trial_seconds`: stop a trial whose training time (Tune's time_total_s, kept across
    restores) passed the limit; the tracker tags its run (schema.TAG_STOPPED_ON = max_trial_seconds)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, trial_id: str, result: dict) -> bool:
        return float(result.get("time_total_s", 0.0)) >= self.seconds

    def stop_all(self) -> bool:
        return False


class TimeBudget(Callback):
    """`time_budget`: after that much wall time in one session, stop the study the way Ctrl-C does
    (SIGINT to the driver, which Tune's handler turns into a saved, resumable experiment).

    Why not TuneConfig(time_budget_s): Tune's TimeoutStopper ends every running and pending trial as
    TERMINATED and marks the searcher finished, so a restored Tuner has nothing left to run and
    `study resume` could not continue the study. The clock restarts in each session (resume), and
    `study resume --time-budget` replaces the budget for that session (through RESUME_BUDGET_ENV:
    a restored Tuner keeps the callbacks it was created with). So it is always installed, with or
    without a budget: a resume can set one."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._t0: float | None = None
        self._sent = False

    def __setstate__(self, state: dict) -> None:  # restored with the Tuner: a new session, a new budget
        self.__dict__.update(state)
        self._t0, self._sent = None, False
        override = os.environ.get(RESUME_BUDGET_ENV)
        if override is not None:
            self.seconds = float(override) or None

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        now = time.time()
        if self._t0 is None:
            self._t0 = now
        if self.seconds and not self._sent and now - self._t0 >= self.seconds:
            self._sent = True
            print_line(f"time budget of {self.seconds:g}s reached: stopping; `depmicro study resume` continues")
            os.kill(os.getpid(), signal.SIGINT)


RESUME_BUDGET_ENV = "DEPMICRO_RESUME_TIME_BUDGET_S"


# --- progress ---------------------------------------------------------------------------------

def progress_callback(spec: StudySpec, total: int):
    class Progress(Callback):
        """One line per event on stderr: start, validated epoch, end. Quiet enough for a log file."""

        def __init__(self) -> None:
            self.t0 = time.time()
            self.done = 0

        def __setstate__(self, state):  # restored with the Tuner: restart the clock and the count
            self.__dict__.update(state)
            self.t0 = time.time()

        def _p(self, text: str) -> None:
            print_line(f"[{spec.name} {time.time() - self.t0:6.0f}s] {text}")

        def on_trial_start(self, iteration, trials, trial, **info):
            s = resolve_trial(spec, trial.config)
            shown = ", ".join(f"{k}={_fmt(trial.config[k])}" for k in spec.search_space if k in trial.config)
            self._p(f"trial {trial.trial_id} start  {s.data_key} {s.arm}{' ' + shown if shown else ''}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("checkpoint_fallback"):
                self._p(f"trial {trial.trial_id} checkpoint: {result['checkpoint_fallback']}")
            m = result.get(spec.metric)
            self._p(f"trial {trial.trial_id} epoch {result.get('epoch')}  {spec.metric}={_fmt(m)}"
                    + (f"  test_pcc_per_microbe={_fmt(result['test_pcc_per_microbe'])}" if "test_pcc_per_microbe" in result else ""))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            how = "finished" if "test_pcc" in (trial.last_result or {}) else "stopped early"
            self._p(f"trial {trial.trial_id} {how} ({self.done}/{total} done this session)")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._p(f"trial {trial.trial_id} failed, retrying from its last checkpoint")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._p(f"trial {trial.trial_id} ERROR (see {trial.path})")

    return Progress()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
