"""The claims table and the noise notes against hand-made MLflow stores with known differences."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from depmicro.analysis import noise
from depmicro.core.cli import main
from tests.analysis.claims_store import EFFECT, SEARCH_SEED_PPM, log_ablation, log_search


def _holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment written out, as an independent check of statsmodels' one."""
    order = np.argsort(p)
    adj, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj


@pytest.fixture(scope="module")
def claims_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("claims")
    uri = log_ablation(root / "store")
    return uri, root


@pytest.fixture(scope="module")
def claims_csv(claims_run):
    uri, root = claims_run
    assert main(["analyze", "claims", "--tracking-uri", uri, "--out", str(root / "out"), "--no-log"]) == 0
    return pd.read_csv(root / "out" / "claims.csv").set_index("claim"), (root / "out" / "report.html").read_text()


def _expected_diffs() -> dict[str, np.ndarray]:
    eff = {k: np.array(v) for k, v in EFFECT.items()}
    both = lambda d: np.concatenate([d, d])  # noqa: E731  (alpha and beta pairs carry the same differences)
    return {
        "VAE pretraining helps": both(-eff["vae_pretrain=false"]),
        "metadata helps": -eff["use_metadata=false"],  # alpha only: beta has no metadata
        "the dependency mask helps (paper vs off)": both(eff["dep_mask_mode=paper"] - eff["dep_mask_mode=off"]),
        "the dependency mask helps (restrict vs off)": both(-eff["dep_mask_mode=off"]),
        "AR decay 0.7 beats 1.0": both(eff["ar_decay=0.7"]),
        "AR decay 0.8 beats 1.0": both(eff["ar_decay=0.8"]),
    }


def test_claims_table_effects_intervals_holm_and_verdicts(claims_csv):
    tab, _ = claims_csv
    want = _expected_diffs()
    untested = "an encoder trained as an imputer helps (visible weight 0.1 vs 1)"  # the store has no such arm
    assert list(tab.index) == [*want, untested]
    assert tab.loc[untested, "n_pairs"] == 0 and tab.loc[untested, "verdict"] == "not tested"
    assert np.isnan(tab.loc[untested, "pcc_per_microbe_p_holm"])  # outside the Holm family
    tab = tab.loc[list(want)]
    p_raw = []
    for claim, d in want.items():
        row = tab.loc[claim]
        half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        assert row["n_pairs"] == len(d)
        assert row["pcc_per_microbe_diff"] == pytest.approx(d.mean(), abs=1e-9)
        assert (row["pcc_per_microbe_ci_low"], row["pcc_per_microbe_ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)
        assert row["rmse_diff"] == pytest.approx(-d.mean(), abs=1e-9)  # rmse = 1 - pcc_per_microbe
        p_raw.append(sps.ttest_1samp(d, 0.0).pvalue)
    np.testing.assert_allclose(tab["pcc_per_microbe_p_holm"].to_numpy(), _holm(p_raw), rtol=1e-6)
    assert tab.loc["metadata helps", "datasets"] == "alpha"
    assert tab.loc["VAE pretraining helps", "treatment"] == "base" and tab.loc["VAE pretraining helps", "control"] == "vae_pretrain=false"
    assert tab.loc["AR decay 0.7 beats 1.0", "control"] == "base"  # 1.0 is the base configuration's decay
    assert tab["verdict"].to_dict() == {
        "VAE pretraining helps": "supported", "metadata helps": "opposite",
        "the dependency mask helps (paper vs off)": "not supported", "the dependency mask helps (restrict vs off)": "not supported",
        "AR decay 0.7 beats 1.0": "supported", "AR decay 0.8 beats 1.0": "not supported"}
    assert (tab["rmse_verdict"] == tab["verdict"]).all()  # rmse falls when pcc rises, so the verdicts agree


def test_analyze_prints_the_claims_table_and_reports_it(claims_run, claims_csv, capsys):
    uri, root = claims_run
    _, report = claims_csv
    assert "The paper&#x27;s claims" in report or "The paper's claims" in report
    assert main(["analyze", "claims", "--tracking-uri", uri, "--out", str(root / "again"), "--no-log"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("| VAE pretraining helps"))
    assert "base vs vae_pretrain=false" in line and "| supported |" in line and "+0.1000" in line


def test_analyze_says_when_configurations_differ_within_the_seed_spread(tmp_path):
    uri = log_search(tmp_path / "store")
    assert main(["analyze", "noisy", "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--no-log", "--json"]) == 0
    report = (tmp_path / "out" / "report.html").read_text()
    sd = float(np.std(SEARCH_SEED_PPM, ddof=1))  # the same seed offsets under each configuration
    assert f"seed sd {sd:.4f}" in report
    assert "within the seed-to-seed spread" in report
    assert "fANOVA importances of best_val_pcc_per_microbe there cannot be told from noise" in report
    assert not (tmp_path / "out" / "claims.csv").exists()  # a search study has no claims to test


def test_noise_sentence_absent_when_configurations_differ_and_says_when_unmeasured():
    rows = [{"kind": "trial", "dataset": "d", "label": lab, "m": v + off}
            for lab, v in (("a", 0.2), ("b", 0.6)) for off in (0.0, 0.01, -0.01)]
    spread = noise.seed_spread(pd.DataFrame(rows), "m")
    assert spread.loc[0, "seed_sd"] == pytest.approx(0.01) and spread.loc[0, "config_range"] == pytest.approx(0.4)
    assert not spread.loc[0, "within_noise"]
    assert "within the seed-to-seed spread" not in noise.sentence(spread, "x")
    once = noise.seed_spread(pd.DataFrame(rows[::3]), "m")  # every configuration ran once
    assert "No seed-to-seed spread was measured" in noise.sentence(once, "the importances")

