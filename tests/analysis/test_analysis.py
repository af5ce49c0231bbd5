"""`depmicro analyze` against a study logged to MLflow with hand-chosen test metrics
(tests/mlflow_study.py): every number the review reports is checked against numbers known in advance."""
from __future__ import annotations

import base64
import io
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from depmicro.core.cli import main
from tests.mlflow_study import ARMS, DATASETS, PPM, REFERENCE, STUDY, logged_study, other_metrics  # noqa: F401


@pytest.fixture(scope="module")
def analyzed(logged_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis_out")
    code = main(["analyze", STUDY, "--tracking-uri", logged_study["tracking_uri"], "--out", str(out), "--json"])
    assert code == 0
    return out


def test_runs_are_read_back_by_kind(logged_study):
    from depmicro.analysis.runs import load_study, results

    s = load_study(STUDY, logged_study["tracking_uri"])
    assert s.parent is not None and s.parent["kind"] == "study"
    assert len(s.trials) == 20 and len(s.finished) == 18 and len(s.baselines) == 6
    assert set(s.finished["label"]) == set(ARMS)
    assert "trial_stopped" not in set(s.finished["trial_id"]) and "trial_error" not in set(s.finished["trial_id"])
    assert s.varying == ["ar_decay"]  # seeds differ too, but a seed is not a setting to review
    assert s.finished["param.ar_decay"].dtype.kind == "f" and s.finished["param.use_metadata"].iloc[0] is False
    r = results(s)
    assert len(r) == 24 and set(r["label"]) == set(ARMS) | {"mean (baseline)"}


def test_table_means_and_stds_are_the_logged_ones(logged_study):
    from depmicro.analysis import tables
    from depmicro.analysis.runs import load_study, results

    summ = tables.summary(results(load_study(STUDY, logged_study["tracking_uri"])))
    assert len(summ) == 4 * 2 * 5
    for (label, dataset), ppm in PPM.items():
        for metric in ("pcc_per_microbe", "pcc", "cos", "rmse", "mae"):
            vals = [ppm_i if metric == "pcc_per_microbe" else other_metrics(ppm_i)[metric] for ppm_i in ppm]
            row = summ[(summ["label"] == label) & (summ["dataset"] == dataset) & (summ["metric"] == metric)].iloc[0]
            assert row["n"] == 3
            assert row["mean"] == pytest.approx(sum(vals) / 3, abs=1e-12)
            assert row["std"] == pytest.approx(math.sqrt(sum((v - sum(vals) / 3) ** 2 for v in vals) / 2), abs=1e-12)
    # alpha, ar_decay=0.7: 0.50, 0.42, 0.34 -> 0.420 ± 0.080
    md = tables.markdown(summ)
    row = next(line for line in md.splitlines() if line.startswith("| ar_decay=0.7 |"))
    assert row.split(" | ")[1] == "0.420 ± 0.080"
    # best in bold: the reference arm everywhere (rmse/mae: lowest), nothing else
    ref_row = next(line for line in md.splitlines() if line.startswith(f"| {REFERENCE} |"))
    assert ref_row.count("**") == 2 * 10
    assert md.count("**") == 2 * 10
    assert md.index("| mean (baseline) |") < md.index("| ar_decay=0.5 |") < md.index(f"| {REFERENCE} |")


def test_paired_tests_match_hand_computed_values(logged_study):
    from depmicro.analysis import stats
    from depmicro.analysis.runs import load_study, results

    comp = stats.compare(results(load_study(STUDY, logged_study["tracking_uri"])))
    assert set(comp["reference"]) == {REFERENCE} and len(comp) == 2 * 3
    r = comp[(comp["dataset"] == "alpha") & (comp["label"] == "ar_decay=0.7")].iloc[0]
    # differences per seed: -0.1, -0.2, -0.3 -> mean -0.2, sd 0.1, d_z = -2, t = -2 sqrt(3)
    assert r["n_pairs"] == 3 and r["mean_diff"] == pytest.approx(-0.2)
    assert r["cohens_d"] == pytest.approx(-2.0)
    assert r["t"] == pytest.approx(-2 * math.sqrt(3))
    assert r["p_ttest"] == pytest.approx(0.0741799, abs=1e-6)       # two-sided t(2) tail of 3.4641
    half = 4.302652729911275 * 0.1 / math.sqrt(3)                     # t_{0.975, 2} sd / sqrt(n)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(-0.2 - half), pytest.approx(-0.2 + half))
    assert r["p_wilcoxon"] == pytest.approx(0.25)                     # exact: 2 * (1/2)^3
    # Holm over the six pcc_per_microbe comparisons, by hand
    p = comp["p_ttest"].to_numpy()
    order = np.argsort(p)
    holm = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        holm[i] = running
    assert np.allclose(comp["p_holm"], holm)
    b = comp[(comp["dataset"] == "beta") & (comp["label"] == "mean (baseline)")].iloc[0]
    assert b["mean_diff"] == pytest.approx(np.mean(np.subtract(PPM[("mean (baseline)", "beta")], PPM[(REFERENCE, "beta")])))


def test_paired_statistics_follow_seed_pairing():
    """Shuffled rows must still pair seed with seed."""
    from depmicro.analysis import stats

    rows = [{"label": lab, "kind": "trial", "dataset": "d", "seed": s, "test_pcc_per_microbe": v}
            for lab, vals in (("a", [1.0, 2.0, 3.0, 4.0]), ("b", [1.5, 2.1, 3.7, 4.2])) for s, v in enumerate(vals)]
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=3)
    comp = stats.compare(df, reference="a")
    assert comp.iloc[0]["mean_diff"] == pytest.approx(np.mean([0.5, 0.1, 0.7, 0.2]))
    assert comp.iloc[0]["cohens_d"] == pytest.approx(np.mean([0.5, 0.1, 0.7, 0.2]) / np.std([0.5, 0.1, 0.7, 0.2], ddof=1))


def test_fanova_credits_the_setting_that_drives_the_metric():
    from depmicro.analysis.importance import param_importance

    rng = np.random.default_rng(0)
    n = 40
    x = rng.uniform(0.3, 1.0, n)
    y = rng.integers(1, 50, n)
    df = pd.DataFrame({"dataset": "d", "param.ar_decay": x, "param.sampling_fraction": y,
                       "param.dep_mask_mode": rng.choice(["paper", "off"], n),
                       "best_val_pcc_per_microbe": 2 * x + 0.01 * rng.normal(size=n)})
    imp = param_importance(df, ["ar_decay", "sampling_fraction", "dep_mask_mode"]).set_index("param")["importance"]
    assert imp.sum() == pytest.approx(1.0)
    assert imp["ar_decay"] > 0.8 and imp["ar_decay"] > 5 * max(imp["sampling_fraction"], imp["dep_mask_mode"])


def test_sweep_over_ar_decay_is_the_arm_means(logged_study):
    from depmicro.analysis.importance import sweeps
    from depmicro.analysis.runs import load_study

    s = load_study(STUDY, logged_study["tracking_uri"])
    sw = sweeps(s.finished)
    assert list(sw) == ["ar_decay"]
    got = sw["ar_decay"].set_index(["dataset", "value"])["mean"]
    for arm in ARMS:
        for d in DATASETS:
            assert got[(d, float(arm.split("=")[1]))] == pytest.approx(np.mean(PPM[(arm, d)]))


def _images(html: str) -> list[bytes]:
    srcs = re.findall(r"<img[^>]*\ssrc='([^']*)'", html)
    out = []
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:40]
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


def test_analyze_writes_tables_figures_and_a_self_contained_report(analyzed, logged_study):
    from PIL import Image

    for name in ("table.csv", "table.md", "summary.csv", "comparisons.csv", "importance.csv", "report.html",
                 "fig_per_microbe_heatmap.png", "fig_pcc_boxplots.png", "fig_importance.png", "fig_sweep_ar_decay.png"):
        assert (analyzed / name).is_file() and (analyzed / name).stat().st_size > 0, name
    wide = pd.read_csv(analyzed / "table.csv", index_col=0)
    assert wide.loc["ar_decay=0.7", "alpha/pcc_per_microbe/mean"] == pytest.approx(0.42)
    assert wide.loc["mean (baseline)", "beta/rmse/mean"] == pytest.approx(1 - np.mean(PPM[("mean (baseline)", "beta")]))
    html = (analyzed / "report.html").read_text()
    imgs = _images(html)
    assert len(imgs) == 4
    for raw in imgs:
        im = Image.open(io.BytesIO(raw))
        im.load()  # a truncated or corrupt PNG fails here
        assert im.size[0] > 100 and im.size[1] > 100
    assert "<b>0.620 ± 0.020</b>" in html  # reference arm, alpha, bold
    assert "src='http" not in html and 'src="' not in html
    # logged to the parent run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(logged_study["tracking_uri"])
    from depmicro.analysis.runs import load_study

    parent = load_study(STUDY, logged_study["tracking_uri"]).parent["run_id"]
    assert [a.path for a in client.list_artifacts(parent, "analysis")] == ["analysis/report.html"]


def test_report_renders_in_headless_chromium(analyzed, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium absent (apt-get install chromium)")
    shot = tmp_path / "report.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}", (analyzed / "report.html").as_uri()],
                   capture_output=True, timeout=90)
    from PIL import Image

    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[:2] == (2400, 1280)
    # figures are colourful; a page whose images failed to load is text on white
    saturated = (im.max(axis=2).astype(int) - im.min(axis=2).astype(int)) > 60
    assert saturated.mean() > 0.01


def test_analyze_unknown_study_is_one_line(logged_study, tmp_path, capsys):
    code = main(["analyze", "nope", "--tracking-uri", logged_study["tracking_uri"], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no study 'nope'" in err


def test_search_trials_are_grouped_by_config_across_seeds():
    """A search study's rows are its configs: the searched values, rounded, without the seed."""
    from depmicro.analysis import tables
    from depmicro.analysis.runs import _label_trials

    t = pd.DataFrame({"variant": ["search"] * 4, "status": ["TERMINATED"] * 4, "kind": ["trial"] * 4,
                      "start_time": pd.to_datetime([4, 3, 2, 1], unit="s"),
                      "dataset": ["d"] * 4, "param.lr": [0.00123456, 0.00123456, 5e-4, 5e-4],
                      "param.n_layers": [1, 1, 2, 2], "param.seed": [0, 1, 2, 3], "param.epochs": [2] * 4,
                      "seed": [0, 1, 0, 1], **{f"test_{m}": [0.1, 0.3, 0.5, 0.9] for m in ("pcc_per_microbe", "pcc", "cos", "rmse", "mae")}})
    labeled, varying = _label_trials(t)
    assert varying == ["lr", "n_layers"]
    assert list(labeled["settings"]) == ["lr=0.001235, n_layers=1"] * 2 + ["lr=0.0005, n_layers=2"] * 2
    assert list(labeled["label"]) == ["config 2"] * 2 + ["config 1"] * 2  # numbered by first start
    summ = tables.summary(labeled)
    row = summ[(summ["label"] == "config 1") & (summ["metric"] == "pcc")].iloc[0]
    assert (row["mean"], row["n"]) == (pytest.approx(0.7), 2) and row["std"] == pytest.approx(np.std([0.5, 0.9], ddof=1))


def test_missing_tracking_database_is_not_created(tmp_path, capsys):
    db = tmp_path / "none.db"
    code = main(["analyze", STUDY, "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no MLflow database" in err and not db.exists()


def test_ablation_sweep_uses_only_the_arms_of_that_factor():
    from depmicro.analysis.importance import sweep

    rows = []
    for label, decay, vals in (("ar_decay=0.5", 0.5, [0.1, 0.2]), ("ar_decay=0.9", 0.9, [0.5, 0.7]),
                               ("dep_mask_mode=off", 0.9, [0.0, 0.0])):
        rows += [{"label": label, "dataset": "d", "param.ar_decay": decay, "test_pcc_per_microbe": v} for v in vals]
    sw = sweep(pd.DataFrame(rows), "ar_decay").set_index("value")
    assert sw.loc[0.9, "mean"] == pytest.approx(0.6) and sw.loc[0.9, "n"] == 2
    assert sw.loc[0.5, "std"] == pytest.approx(np.std([0.1, 0.2], ddof=1))


def test_reference_is_the_arm_repeating_the_base_config(logged_study, tmp_path, capsys):
    from depmicro.analysis.runs import StudyRuns, base_arms

    parent = pd.Series({"param.base_config.ar_decay": "0.9", "param.base_config.vae_pretrain": "True",
                        "param.base_config.dep_mask_mode": "restrict"})
    trials = pd.DataFrame({"label": ["ar_decay=0.7", "ar_decay=0.9", "vae_pretrain=false", "vae_pretrain=true",
                                     "dep_mask_mode=off"]})
    s = StudyRuns("s", "uri", "1", parent, trials, pd.DataFrame())
    assert base_arms(s) == ["ar_decay=0.9", "vae_pretrain=true"]
    # an explicit reference; an unknown one is one line
    out = tmp_path / "o"
    assert main(["analyze", STUDY, "--tracking-uri", logged_study["tracking_uri"], "--out", str(out),
                 "--reference", "ar_decay=0.5", "--no-log"]) == 0
    comp = pd.read_csv(out / "comparisons.csv")
    assert set(comp["reference"]) == {"ar_decay=0.5"}
    r = comp[(comp["dataset"] == "alpha") & (comp["label"] == REFERENCE) & (comp["metric"] == "pcc_per_microbe")].iloc[0]
    assert r["mean_diff"] == pytest.approx(np.mean(PPM[(REFERENCE, "alpha")]) - np.mean(PPM[("ar_decay=0.5", "alpha")]))
    capsys.readouterr()
    code = main(["analyze", STUDY, "--tracking-uri", logged_study["tracking_uri"], "--out", str(out), "--reference", "x=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no arm 'x=1'" in err
