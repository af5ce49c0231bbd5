"""`depmicro analyze`: tables, paired tests, importance and figures from a study's MLflow runs,
gathered in one self-contained report.html (figures embedded as base64 PNG, so the file can be
mailed or attached to the parent run and still show every figure)."""
from __future__ import annotations

import base64
import html as h
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from depmicro.analysis import claims, confirm, figures, importance, noise, stats, tables
from depmicro.analysis import inference as inference_tables
from depmicro.analysis.runs import StudyRuns, base_arms, configs, load_study, per_microbe, results
from depmicro.core.errors import DepmicroError
from depmicro.core.io.atomic import atomic_dir, atomic_write_text
from depmicro.core.io.manifest import MANIFEST, write_manifest
from depmicro.core.io.outputs import REPORT_KIND, check_output

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}h2{border-bottom:1px solid #ddd;margin-top:1.6em}
figure{display:inline-block;margin:0.5em;vertical-align:top}figcaption{font-size:12px;color:#555;max-width:520px}
img{max-width:100%}.muted{color:#777;font-size:12px}.noise{background:#fff8e1;padding:4px 8px;font-size:13px}"""


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f"<figure><img alt='{h.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{h.escape(caption)}</figcaption></figure>")


def _frame_html(df: pd.DataFrame, floats: str = "{:.4g}") -> str:
    if df.empty:
        return "<p class='muted'>nothing to show</p>"
    return df.to_html(index=False, float_format=lambda x: floats.format(x), na_rep="–", border=0, escape=True)


def analyze(study_name: str, out: str | Path, tracking_uri: str | None = None, log_to_parent: bool = True,
            reference: str | None = None) -> dict:
    """Write the review of a study into `out`; returns the paths and the headline numbers.

    Paired tests compare every arm with `reference`: by default the arm repeating the base config
    (an ablation study's full model), else the arm with the best mean per-microbe PCC."""
    t0 = time.perf_counter()
    target = check_output(out, directory=REPORT_KIND)  # replaces only an earlier report, and can write there
    study = load_study(study_name, tracking_uri)
    res = results(study)
    if res.empty:
        raise DepmicroError(f"study {study_name!r} has no finished trials or baselines with test metrics yet")
    labels = set(res["label"])
    if reference is not None and reference not in labels:
        raise DepmicroError(f"no arm {reference!r} in study {study_name!r} (arms: {', '.join(sorted(labels))})")
    reference = reference or next((a for a in base_arms(study) if a in labels), None) or stats.reference_label(res)
    fin = study.finished
    best = stats.reference_label(res)
    written: list[dict] = []

    def fill(d: Path) -> None:
        written.append(_write_report(study, res, d, reference, best))
        write_manifest(d, kind=REPORT_KIND)

    # built in a sibling folder and renamed into place: an error leaves the old report or none, never half
    atomic_dir(target, fill)
    report = target / "report.html"
    logged = False
    if log_to_parent and study.parent is not None:
        from mlflow.tracking import MlflowClient

        MlflowClient(study.tracking_uri).log_artifact(study.parent["run_id"], str(report), artifact_path="analysis")
        logged = True
    return {
        "study": study_name, "out": str(out), "n_trials": int(len(study.trials)), "n_finished": int(len(fin)),
        "n_baseline_runs": int(len(study.baselines)), "reference": reference, "best": best,
        "files": sorted(p.name for p in target.iterdir() if not p.name.startswith(".") and p.name != MANIFEST),
        **written[0], "logged_to_parent": logged, "seconds": round(time.perf_counter() - t0, 2),
    }


def _write_report(study: StudyRuns, res: pd.DataFrame, out: Path, reference: str, best: str) -> dict:
    """Every table, figure and report.html into `out`; returns the figure count and the inference/confirm headlines."""
    fin = study.finished
    # params of finished trials for sweeps; baselines have none
    res_params = res.merge(fin[["run_id"] + [c for c in fin.columns if c.startswith("param.")]], on="run_id", how="left")
    summ = tables.summary(res)
    tables.write_tables(summ, out)
    cfgs = configs(study)
    if len(cfgs):
        atomic_write_text(out / "configs.csv", cfgs.to_csv(index=False))
    comp = stats.compare(res, metrics=("pcc_per_microbe", "pcc", "rmse"), reference=reference)
    atomic_write_text(out / "comparisons.csv", comp.to_csv(index=False))

    ended = study.ended
    target = importance.DEFAULT_TARGET if importance.DEFAULT_TARGET in ended else "val_pcc_per_microbe"
    imp = importance.param_importance(ended, study.varying, target=target)
    atomic_write_text(out / "importance.csv", imp.to_csv(index=False))
    # the paper plots test metrics against a setting (Fig. 10); a search whose finished trials do not
    # cover two values of a setting (ASHA stops most) falls back to the validation target of all ended trials
    sws = {p: (s, "test_pcc_per_microbe") for p, s in importance.sweeps(res_params[res_params["kind"] == "trial"]).items()}
    sws.update({p: (s, target) for p, s in importance.sweeps(ended, metric=target).items() if p not in sws})
    for p, (s, _) in sws.items():
        atomic_write_text(out / f"sweep_{p}.csv", s.to_csv(index=False))

    figs: list[tuple[Path, str]] = []
    pcc = per_microbe(list(res["run_id"]))
    mat = figures.per_microbe_matrix(res, pcc, best)
    if (f := figures.heatmap(mat, out / "fig_per_microbe_heatmap.png", f"per-microbe test PCC, {best}")):
        figs.append((f, f"Per-microbe test PCC of {best} across datasets (mean over seeds; blank: fewer than 5 held-out entries). Cf. paper Fig. 5."))
    if (f := figures.boxplots(res, pcc, out / "fig_pcc_boxplots.png")):
        figs.append((f, "Per-microbe test PCC by method (each point a microbe, averaged over seeds). Cf. paper Fig. 6."))
    if (f := figures.importance_bars(imp, out / "fig_importance.png")):
        figs.append((f, f"fANOVA hyperparameter importance of {target} over finished and ASHA-stopped trials, per dataset."))
    for p, (s, metric) in sws.items():
        if (f := figures.sweep_plot(s, p, metric, out / f"fig_sweep_{p}.png")):
            cap = f"{metric} against {p} (mean ± std over trials sharing the value)" + (" — cf. paper Fig. 10." if p == "ar_decay" else ".")
            figs.append((f, cap))

    inf = inference_tables.table(study)
    if len(inf):
        atomic_write_text(out / "inference.csv", inf.to_csv(index=False))
        if (f := figures.inference_pareto(inf, out / "fig_inference_pareto.png")):
            figs.insert(0, (f, "Validation quality against imputation seconds for every inference setting of every "
                               "finished trial (grey); red: the Pareto front per dataset."))

    confirm_table = confirm.load_confirm(study)
    conf = confirm.frame(confirm_table) if confirm_table else pd.DataFrame()
    if len(conf):
        atomic_write_text(out / "confirm.csv", conf.to_csv(index=False))
    claims_tab = _claims(study, res, out)
    notes = _noise_notes(res, ended, target, sws, comp)
    atomic_write_text(out / "report.html", _html(study, res, summ, comp, imp, figs, target, cfgs, inf, conf, claims_tab, notes))
    return {
        "n_figures": len(figs),
        "inference": ({"settings": int(inf["setting"].nunique()), "rows": int(len(inf)),
                       "pareto": inf[inf["pareto"]][["dataset", "setting", "trial_id"]].to_dict("records")}
                      if len(inf) else None),
        "confirm": ({"winner": confirm_table["winner"], "winner_config": confirm_table["winner_config"]}
                    if confirm_table else None),
        "claims": _claims_summary(claims_tab), "noise": notes["test"],
    }


# --- claims and noise (issue 15) -------------------------------------------------------------------

def _claims(study: StudyRuns, res: pd.DataFrame, out: Path) -> pd.DataFrame | None:
    """The claims table of an ablation study (None for a search study): claims.csv and claims.md."""
    if not claims.has_ablation_arms(res):
        return None
    base, metadata_sets = claims.study_context(study.parent)
    tab = claims.claims_table(res, base, metadata_sets)
    atomic_write_text(out / "claims.csv", tab.to_csv(index=False))
    atomic_write_text(out / "claims.md", claims.markdown(tab))
    return tab


def _claims_summary(tab: pd.DataFrame | None) -> list[dict]:
    if tab is None:
        return []
    r = lambda x: None if x != x else round(float(x), 4)  # noqa: E731
    return [{"claim": row["claim"], "verdict": row["verdict"], "pairs": int(row["n_pairs"]),
             "pcc_per_microbe_diff": r(row["pcc_per_microbe_diff"]),
             "ci95": [r(row["pcc_per_microbe_ci_low"]), r(row["pcc_per_microbe_ci_high"])],
             "p_holm": r(row["pcc_per_microbe_p_holm"]), "rmse_diff": r(row["rmse_diff"]), "rmse_verdict": row["rmse_verdict"]}
            for _, row in tab.iterrows()]


def _noise_notes(res: pd.DataFrame, ended: pd.DataFrame, target: str, sws: dict, comp: pd.DataFrame) -> dict[str, str]:
    """Sentences on the seed-to-seed spread for the tables, the importances, each sweep and the comparisons."""
    test = noise.seed_spread(res, "test_pcc_per_microbe")
    labelled = ended if "label" in ended else ended.assign(label=None)
    val = noise.seed_spread(labelled, target)
    notes = {"test": noise.sentence(test, "the differences between the configurations' test scores"),
             "importance": noise.sentence(val, f"the fANOVA importances of {target}")}
    for p, (s, metric) in sws.items():
        spread = test if metric == "test_pcc_per_microbe" else noise.seed_spread(labelled, metric)
        ranges = {d: float(g["mean"].max() - g["mean"].min()) for d, g in s.groupby("dataset")}
        notes[f"sweep:{p}"] = noise.sentence(spread, f"the {p} sweep", ranges)
    c = comp[(comp["metric"] == "pcc_per_microbe")] if len(comp) else comp
    ranges = {d: float(g["mean_diff"].abs().max()) for d, g in c.groupby("dataset")} if len(c) else {}
    notes["comparisons"] = noise.sentence(test, "the unpaired differences from the reference", ranges)
    return notes


def _note_html(text: str) -> str:
    return f"<p class='noise'><b>Noise.</b> {h.escape(text)}</p>"


def _claims_html(tab: pd.DataFrame | None) -> list[str]:
    if tab is None:
        return []
    return ["<h2>The paper's claims</h2>",
            f"<p class='muted'>treatment minus control, paired by dataset and seed; 95 % t-interval of the mean difference; "
            f"paired t-test p Holm-corrected over the claims, per metric; verdict at Holm p &lt; {claims.ALPHA:g} "
            f"(supported: the claimed direction, opposite: the other one). Arms: analysis/claims.py.</p>",
            _frame_html(tab)]


def _html(study: StudyRuns, res: pd.DataFrame, summ: pd.DataFrame, comp: pd.DataFrame, imp: pd.DataFrame,
          figs: list[tuple[Path, str]], target: str, cfgs: pd.DataFrame, inf: pd.DataFrame | None = None,
          conf: pd.DataFrame | None = None, claims_tab: pd.DataFrame | None = None,
          notes: dict[str, str] | None = None) -> str:
    notes = notes or {}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    status = study.trials["status"].value_counts().to_dict() if len(study.trials) else {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>depmicro study {h.escape(study.name)}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>Study <code>{h.escape(study.name)}</code></h1>",
             f"<p class='muted'>tracking {h.escape(study.tracking_uri)} · experiment {h.escape(study.experiment_id)} · "
             f"generated {now} · trials by status: {h.escape(json.dumps(status))} · "
             f"{len(study.baselines)} baseline runs · datasets: {h.escape(', '.join(sorted(res['dataset'].unique())))}</p>",
             "<h2>Test metrics (Table II style)</h2>",
             "<p class='muted'>mean ± sample std over held-out-mask seeds; best per dataset and metric in bold "
             "(higher is better for PCC/cos, lower for RMSE/MAE).</p>",
             tables.html(summ),
             _note_html(notes.get("test", "")),
             *(["<p class='muted'>search configurations (settings that differ between trials):</p>", _frame_html(cfgs)]
               if len(cfgs) else []),
             "<h2>Paired comparisons over seeds</h2>",
             "<p class='muted'>each arm minus the reference on the same seeds: paired t-test, Wilcoxon signed-rank, "
             "Cohen's d<sub>z</sub>, 95 % t-interval of the mean difference, Holm-corrected t-test p (per metric). "
             "Arms with fewer than two shared seeds are left out here (comparisons.csv has them).</p>",
             _note_html(notes.get("comparisons", "")),
             _frame_html(comp[comp["n_pairs"] >= 2]),
             *_claims_html(claims_tab),
             "<h2>Hyperparameter importance</h2>",
             f"<p class='muted'>Optuna fANOVA (normalized to sum 1) over trials that finished or were stopped early by ASHA, "
             f"target {h.escape(target)}; needs at least {importance.MIN_TRIALS} such trials per dataset.</p>",
             _note_html(notes.get("importance", "")),
             _frame_html(imp)]
    if inf is not None and len(inf):
        parts += ["<h2>Inference settings: Pareto front</h2>",
                  "<p class='muted'>each finished trial scored every inference setting on its best-validation model; "
                  "rows on the quality-vs-seconds Pareto front (per dataset, on validation) below, all rows in "
                  "inference.csv.</p>", _frame_html(inf[inf["pareto"]].drop(columns=["pareto"]))]
    if conf is not None and len(conf):
        parts += ["<h2>Confirmation: search-phase against confirmed scores</h2>",
                  "<p class='muted'>the best configurations of the search, trained again on held-out seeds the search "
                  "never saw; the winner has the best one-sided 95 % t bound over those seeds. The search score of a "
                  "configuration picked for being high is biased upward (winner's curse); the gap is that bias, measured.</p>",
                  _frame_html(conf)]
    parts += ["<h2>Figures</h2>"]
    parts += [note for key, note in notes.items() if key.startswith("sweep:") for note in [_note_html(f"{key[6:]} sweep: {note}")]]
    parts += [_img(p, c) for p, c in figs] or ["<p class='muted'>no figures (no per-microbe artifacts)</p>"]
    parts.append("</body></html>")
    return "\n".join(parts)
