"""K-fold cross-validation (``alnett-edge train --folds K``): every fold trained with the same recipe
and scored on cells it never saw.

Folds are patient-disjoint and stratified by class (:func:`alnett_edge.data.splits.cv_partition`).
For fold k the held-out cells are fold k; the other folds are split again, patient-disjointly, into
training and validation cells (``val_fraction``): validation chooses the epoch and fits the
temperature (:mod:`alnett_edge.metrics`), the held-out fold only scores. The card records
``cv_folds`` / ``cv_fold``, so ``evaluate --split test`` rebuilds a fold's held-out cells.

Writes ``OUT/fold_<k>/`` (each fold's run and its held-out evaluation), ``cv_report.json``,
``cv_report.md`` and ``cv_roc.png`` (every fold's ROC curve on one plot).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.errors import ConfigError
from alnett_edge.train.evaluate import evaluate_checkpoint
from alnett_edge.train.loop import TrainConfig, train
from alnett_edge.train.plots import plot_rocs

log = logging.getLogger(__name__)

#: the per-fold figures the report averages
CV_KEYS = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc", "ece")


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "std": None}
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4)}


def cross_validate(cfg: TrainConfig, folds: int, progress: bool = True) -> dict[str, Any]:
    """Train and score ``folds`` folds of ``cfg`` (see the module doc); returns the report."""
    if folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {folds}")
    if cfg.resume or cfg.stop_after is not None:
        raise ConfigError("--folds runs every fold to the end: --resume and --stop-after do not apply")
    out = Path(cfg.out)
    t0 = time.perf_counter()
    rows, curves = [], []
    for k in range(folds):
        fold_dir = out / f"fold_{k}"
        log.info("fold %d of %d", k + 1, folds)
        result = train(replace(cfg, out=str(fold_dir), cv_folds=folds, cv_fold=k), progress=progress)
        rep = evaluate_checkpoint(result.best, cfg.data, fold_dir / "test", cfg.layout, cfg.labels_csv, split="test")
        m = rep["metrics"]
        rows.append({"fold": k, "n_test": m["n"], "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                     "seconds": round(result.seconds, 1), "temperature": m["calibration"]["temperature"],
                     **{key: m[key] for key in CV_KEYS if key != "ece"}, "ece": m["calibration"]["ece"],
                     "checkpoint": str(result.best)})
        auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        curves.append((f"fold {k}: AUC {auc}", [p["label"] == "all" for p in rep["predictions"]],
                       [p["prob_all"] for p in rep["predictions"]]))
    report: dict[str, Any] = {
        "folds": folds, "data": cfg.data, "variant": cfg.variant, "seconds": round(time.perf_counter() - t0, 1),
        "grouping": "patient-disjoint, stratified by class", "per_fold": rows,
        "summary": {key: _mean_std([r[key] for r in rows]) for key in CV_KEYS},
        "note": "ece: expected calibration error on the held-out fold at the temperature fitted on that fold's "
                "validation split",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "cv_report.json").write_text(json.dumps(report, indent=2))
    (out / "cv_report.md").write_text(markdown(report))
    plot_rocs(curves, out / "cv_roc.png", f"{cfg.variant}, {folds}-fold ROC (held-out cells)")
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table: a row per fold, then mean ± std."""
    keys = CV_KEYS
    head = "| fold | test cells | best epoch | T | " + " | ".join(keys) + " |"
    rule = "|--:|--:|--:|--:|" + "--:|" * len(keys)
    lines = [f"# {report['variant']}: {report['folds']}-fold cross-validation of {report['data']}", "",
             f"Folds {report['grouping']}; {report['seconds']:.0f} s in all. {report['note']}.", "", head, rule]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for r in report["per_fold"]:
        lines.append(f"| {r['fold']} | {r['n_test']} | {r['best_epoch']} | {r['temperature']:.2f} | "
                     + " | ".join(fmt(r[k]) for k in keys) + " |")
    s = report["summary"]
    lines.append("| **mean ± std** | | | | " + " | ".join(
        "n/a" if s[k]["mean"] is None else f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"
