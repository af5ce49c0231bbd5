"""The MLflow layout of a study, written once: studies/tracking.py writes runs in it and
analysis/runs.py reads them back.

Why a module of its own: tracking.py imports Ray (it is a Tune callback) and analysis must run
without Ray, so before this the names were written twice and could drift apart. Nothing here
imports Ray or MLflow.

Layout: one experiment `depmicro-<study>` per study; in it a parent run (kind "study") holding the
flattened spec as params and `study.yaml`, one child run per trial (kind "trial": per-epoch
EPOCH_KEYS at step = epoch, FINAL_KEYS at the end, `config.json`, `per_microbe_pcc.json` and the
`model/` bundle of a finished trial) and one per baseline (kind "baseline": test_<metric> and
`per_microbe_pcc.json`). Runs are found by their tags (TAG_*), never by name.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

from depmicro.core.data.evaluation import COUNTS, METRICS
from depmicro.core.errors import DepmicroError

# --- where ------------------------------------------------------------------------------------

EXPERIMENT_PREFIX = "depmicro-"


def experiment_name(study: str) -> str:
    return f"{EXPERIMENT_PREFIX}{study}"


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """SQLite in the working directory: a study needs no server to be tracked."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def normalize_tracking_uri(uri: str) -> str:
    """A relative SQLite path is made absolute: `study resume` may run from another directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


SUPPORTED_SCHEMES = ("sqlite", "http", "https", "file", "databricks", "postgresql", "mysql", "mssql")


def check_tracking_uri(uri: str) -> str:
    """Refuse a URI MLflow cannot use before it is handed to MLflow (which answers a typo with a
    40-line exception), and a SQLite file whose folder does not exist."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if "://" in uri and scheme not in SUPPORTED_SCHEMES:
        raise DepmicroError(f"--tracking-uri {uri}: not a tracking URI MLflow supports "
                            "(use sqlite:///PATH.db, http(s)://HOST:PORT, file:///DIR or a SQL database URI)")
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.is_dir():
            raise DepmicroError(f"--tracking-uri {uri}: {db} is a directory, not a database file")
        if not db.parent.is_dir():
            raise DepmicroError(f"--tracking-uri {uri}: folder {db.parent} does not exist")
    return uri


def enable_wal(uri: str) -> bool:
    """Switch a SQLite tracking store to write-ahead logging (persistent, stored in the file).

    Why: in SQLite's default rollback journal a reader blocks the writer and the other way round,
    so `depmicro analyze` (reads, then logs report.html to the parent run) next to a running study
    (the driver writes every epoch) fails with "database is locked". In WAL mode readers never block
    the writer and a writer does not block readers. WAL needs a local file system (it uses shared
    memory), which is where a SQLite store belongs anyway; a server is the answer on a cluster.
    Best effort: returns False when the switch cannot be made now (another connection is writing).
    """
    if not uri.startswith("sqlite:///"):
        return False
    db = Path(uri[len("sqlite:///"):])
    if not db.is_file():
        return False
    try:
        with sqlite3.connect(db, timeout=10) as con:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        return str(mode).lower() == "wal"
    except sqlite3.Error:
        return False


# --- tags ---------------------------------------------------------------------------------------

TAG_PREFIX = "depmicro."
TAG_PARENT = "mlflow.parentRunId"
TAG_STUDY = "depmicro.study"
TAG_KIND = "depmicro.kind"            # KIND_STUDY | KIND_TRIAL | KIND_BASELINE
TAG_TRIAL_ID = "depmicro.trial_id"
TAG_DATASET = "depmicro.dataset"
TAG_SEED = "depmicro.seed"            # the held-out mask seed
TAG_VARIANT = "depmicro.variant"      # the ablation arm ("search" without ablations)
TAG_REPLICATE = "depmicro.replicate"
TAG_METHOD = "depmicro.method"        # a baseline's name
TAG_STATUS = "depmicro.status"        # RUNNING | TERMINAL; set last, so it marks a run as complete
TAG_GIT_COMMIT = "depmicro.git_commit"
TAG_ERROR = "depmicro.error"
TAG_EPOCHS_DONE = "depmicro.epochs_done"
TAG_NODE_ID = "depmicro.node_id"
TAG_NODE_IP = "depmicro.node_ip"
TAG_RETRIES = "depmicro.retries"
TAG_CHECKPOINT_FALLBACK = "depmicro.checkpoint_fallback"  # a corrupt checkpoint was skipped on restore
TAG_STOPPED_ON = "depmicro.stopped_on"        # parent: "time_budget" (empty once resumed); trial: "max_trial_seconds"
TAG_DATA_SHA256 = "depmicro.data_sha256"      # parent: {data file name: sha256} at `study run`
TAG_VERSION_PREFIX = "depmicro.version."      # parent: + torch | ray | optuna | mlflow
TAG_RESUMES = "depmicro.resumes"              # parent: how many `study resume` sessions
TAG_DATA_CHANGED = "depmicro.data_changed"    # parent: "true" once resumed with --allow-changed-data
TAG_CONFIRM_RANK = "depmicro.confirm_rank"    # confirm run: rank of its configuration in the search
TAG_WINNER_RANK = "depmicro.winner_rank"      # parent: the confirmed winner's rank
TAG_WINNER_CONFIG = "depmicro.winner_config"  # parent: the confirmed winner's searched settings (JSON)

KIND_STUDY, KIND_TRIAL, KIND_BASELINE = "study", "trial", "baseline"
KIND_CONFIRM = "confirm"  # a confirmation trial (a search configuration re-run on an extra held-out seed)
TERMINAL = ("TERMINATED", "ERROR", "STOPPED")  # TAG_STATUS values of a trial that is over
# TAG_STATUS of a run whose trial Tune's saved state never held (its driver died as the trial started):
# the run is closed and soft-deleted (`mlflow runs restore` brings it back); Tune re-runs the configuration
ORPHANED = "ORPHANED"
FINISHED = "TERMINATED"  # ran to the end: it has test metrics


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def run_filter(study: str, kind: str | None = None, **tags: object) -> str:
    """An MLflow search filter for the runs of `study` (of one kind), with more tags by short name
    (`dataset="stad"` means TAG_DATASET)."""
    flt = f"tags.`{TAG_STUDY}` = '{_quote(study)}'"
    if kind is not None:
        flt += f" and tags.`{TAG_KIND}` = '{_quote(kind)}'"
    for short, value in tags.items():
        flt += f" and tags.`{TAG_PREFIX}{short}` = '{_quote(str(value))}'"
    return flt


def tag_column(tag: str) -> str:
    """The column `mlflow.search_runs(output_format="pandas")` gives a tag."""
    return f"tags.{tag}"


# --- metrics and artifacts ---------------------------------------------------------------------

EPOCH_KEYS = ("train_loss", "epoch_seconds", *(f"val_{m}" for m in METRICS))  # per epoch, step = epoch
FINAL_KEYS = (*(f"test_{m}" for m in (*METRICS, *COUNTS)), "best_val_pcc_per_microbe", "seconds", "vae_seconds",
              "vae_cached")  # once, when a trial ends (test_* only when it finished)

ARTIFACT_SPEC = "study.yaml"                 # parent run: the study file as given
ARTIFACT_CONFIG = "config.json"              # trial: its full ModelConfig
ARTIFACT_PER_MICROBE = "per_microbe_pcc.json"  # trial and baseline: {"var_names", "test", "val"}
ARTIFACT_MODEL = "model"                     # finished trial: the best-validation model bundle
ARTIFACT_PROVENANCE = "provenance.json"      # parent: data hashes, commit, library versions at `study run`
ARTIFACT_RESUMES = "resumes.json"            # parent: every resume (commit, versions, changed data)
ARTIFACT_WARM_START = "warm_start.json"      # parent: the configurations a warm start enqueued
# also: inference.json (trial; studies/inference.py), confirm.json (parent; studies/confirm.py)
