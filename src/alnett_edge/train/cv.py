"""K-fold cross-validation (``alnett-edge train --folds K``): every fold trained with the same recipe
and scored on cells it never saw.

Folds are patient-disjoint and stratified by class (:func:`alnett_edge.data.splits.cv_partition`).
For fold k the held-out cells are fold k; the other folds are split again, patient-disjointly, into
training and validation cells (``val_fraction``): validation chooses the epoch and fits the
temperature (:mod:`alnett_edge.metrics`), the held-out fold only scores. The card records
``cv_folds`` / ``cv_fold``, so ``evaluate --split test`` rebuilds a fold's held-out cells.

Writes ``OUT/fold_<k>/`` (each fold's run and its held-out evaluation), ``cv_report.json``,
``cv_report.md`` and ``cv_roc.png`` (every fold's ROC curve on one plot). With ``ensemble``, also
``OUT/ensemble.safetensors``: the fold models as one model (:func:`build_ensemble`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.data.sources import classes_of, load_samples
from alnett_edge.errors import ConfigError
from alnett_edge.metrics import (binary_metrics, ece_noise_floor, expected_calibration_error, field_scores, roc_auc,
                                 rule_score)
from alnett_edge.model.checkpoint import load_checkpoint, read_card, save_checkpoint
from alnett_edge.model.ensemble import MEMBERS_KEY, ALNettEnsemble
from alnett_edge.model.profile import profile_model
from alnett_edge.train.evaluate import evaluate_checkpoint
from alnett_edge.train.loop import TrainConfig, resolve_stain, train
from alnett_edge.train.plots import plot_rocs

log = logging.getLogger(__name__)

#: the per-fold figures the report averages
CV_KEYS = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc", "ece", "ece_floor")


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "std": None}
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4)}


def cross_validate(cfg: TrainConfig, folds: int, progress: bool = True, ensemble: bool = False) -> dict[str, Any]:
    """Train and score ``folds`` folds of ``cfg`` (see the module doc); returns the report."""
    if folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {folds}")
    if cfg.resume or cfg.stop_after is not None:
        raise ConfigError("--folds runs every fold to the end: --resume and --stop-after do not apply")
    out = Path(cfg.out)
    t0 = time.perf_counter()
    # --stain auto is decided once, on the whole dataset: every fold (and an ensemble of them) shares a card
    samples = load_samples(cfg.data, cfg.layout, cfg.labels_csv)
    cfg = replace(cfg, stain=resolve_stain(cfg.stain, samples, classes_of(samples).names))
    rows, curves, fields = [], [], []
    for k in range(folds):
        fold_dir = out / f"fold_{k}"
        log.info("fold %d of %d", k + 1, folds)
        result = train(replace(cfg, out=str(fold_dir), cv_folds=folds, cv_fold=k), progress=progress)
        rep = evaluate_checkpoint(result.best, cfg.data, fold_dir / "test", cfg.layout, cfg.labels_csv, split="test")
        m = rep["metrics"]
        rows.append({"fold": k, "n_test": m["n"], "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                     "seconds": round(result.seconds, 1), "temperature": m["calibration"]["temperature"],
                     **{key: m[key] for key in CV_KEYS if not key.startswith("ece")}, "ece": m["calibration"]["ece"],
                     "ece_floor": m["calibration"]["ece_floor"],
                     "checkpoint": str(result.best)})
        auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        curves.append((f"fold {k}: AUC {auc}", [p["blast"] for p in rep["predictions"]],
                       [p["prob_all"] for p in rep["predictions"]]))
        rule = read_card(result.best).field_decision
        if rule:  # a harvest of fields labelled per field: the held-out fields called by this fold's rule
            fields.append((rule, *field_scores(curves[-1][1], curves[-1][2], [p["patient_id"] for p in rep["predictions"]],
                                               rule_score(rule))))
    pooled_y = np.concatenate([np.asarray(c[1], dtype=int) for c in curves])
    pooled_p = np.concatenate([np.asarray(c[2], dtype=np.float64) for c in curves])
    pooled = binary_metrics(pooled_y, pooled_p)
    probs2 = np.stack([1 - pooled_p, pooled_p], axis=1)
    report: dict[str, Any] = {
        "folds": folds, "data": cfg.data, "variant": cfg.variant, "seconds": round(time.perf_counter() - t0, 1),
        "grouping": "patient-disjoint, stratified by class", "per_fold": rows,
        "summary": {key: _mean_std([r[key] for r in rows]) for key in CV_KEYS},
        "pooled": {"n": len(pooled_y), **{k: pooled[k] for k in CV_KEYS if not k.startswith("ece")},
                   "ece": round(expected_calibration_error(probs2, pooled_y), 4),
                   "ece_floor": round(ece_noise_floor(probs2), 4)},
        "note": "ece: expected calibration error on the held-out fold at the temperature fitted on that fold's "
                "validation split; ece_floor: the ECE those probabilities would show on that many cells if they "
                "were perfectly calibrated (sampling noise alone); pooled: every fold's held-out cells together",
    }
    if fields:
        report["fields"] = _field_report(fields)
    out.mkdir(parents=True, exist_ok=True)
    if ensemble:
        report["ensemble"] = build_ensemble([r["checkpoint"] for r in rows], out / "ensemble.safetensors")
    (out / "cv_report.json").write_text(json.dumps(report, indent=2))
    (out / "cv_report.md").write_text(markdown(report))
    plot_rocs(curves, out / "cv_roc.png", f"{cfg.variant}, {folds}-fold ROC (held-out cells)")
    return report


def _field_report(folds: list[tuple[dict[str, Any], list[str], np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Field-level ALL vs benign on the held-out fields: each fold's fields called by the threshold
    that fold fitted on its validation fields; the AUC is of the field score, pooled."""
    labels = np.concatenate([f[2] for f in folds])
    scores = np.concatenate([f[3] for f in folds])
    called = np.concatenate([f[3] > float(f[0]["threshold"]) for f in folds])
    m = binary_metrics(labels, called.astype(float), 0.5)
    cells = np.concatenate([f[4] for f in folds])
    return {"fields": int(len(labels)), "accuracy": m["accuracy"], "sensitivity": m["sensitivity"],
            "specificity": m["specificity"], "auc": roc_auc(labels, scores),
            "score": sorted({rule_score(f[0]) for f in folds}),
            "thresholds": [f[0]["threshold"] for f in folds], "cells_per_field": {
                "median": float(np.median(cells)), "min": int(cells.min()), "max": int(cells.max())},
            "note": "a field's score is the mean over its harvested cells of the card's cell score (metrics.cell_score: "
                    "the log-odds of blast, or 1 for a blast call); each fold's held-out fields are called with the "
                    "threshold fitted on that fold's validation fields"}


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
    p = report["pooled"]
    lines.append(f"| **pooled** | {p['n']} | | | " + " | ".join(fmt(p[k]) for k in keys) + " |")
    if report.get("fields"):
        f = report["fields"]
        lines += ["", f"Held-out fields ({f['fields']}, {f['cells_per_field']['median']:.0f} cells each, median): "
                      f"accuracy {f['accuracy']:.3f}, sensitivity {f['sensitivity']:.3f}, specificity "
                      f"{f['specificity']:.3f}, AUC {fmt(f['auc'])}; {f['note']}."]
    return "\n".join(lines) + "\n"


def build_ensemble(checkpoints: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """One checkpoint that averages the calibrated logits of ``checkpoints`` (fp32 models with the same
    input contract), written to ``out``; returns what it holds and what it costs at run time.

    The members' own validation figures do not describe the ensemble, and no cell is held out from all
    of them, so its card carries no validation metrics: the cross-validation report is the estimate
    (an ensemble of the folds is usually at least as good as its mean fold). Each member's temperature
    stays inside the graph, so the card's temperature is 1. The input canvas is the median of the
    members' measured ``canvas_um``.
    """
    if len(checkpoints) < 2:
        raise ConfigError(f"an ensemble needs at least 2 checkpoints, got {len(checkpoints)}")
    loaded = [load_checkpoint(p) for p in checkpoints]
    models, cards = [m for m, _ in loaded], [c for _, c in loaded]
    base = cards[0]
    for p, c in zip(checkpoints, cards):
        if replace(c.input, canvas_um=0.0) != replace(base.input, canvas_um=0.0) or c.class_names != base.class_names:
            raise ConfigError(f"{p} has another input contract or classes than {checkpoints[0]}; "
                              "an ensemble's members must be fed alike")
        if MEMBERS_KEY in c.arch:
            raise ConfigError(f"{p} is already an ensemble")
    temps = [c.temperature for c in cards]
    model = ALNettEnsemble(models, temps).eval()
    card = base.copy()
    canvas = [c.input.canvas_um for c in cards]
    card.input = replace(base.input, canvas_um=float(np.median(canvas)))
    card.calibration = {"method": "mean of the members' logits, each divided by its own temperature",
                        "temperature": 1.0, "member_temperatures": temps}
    card.metrics, card.compression = {}, {}
    # Not a fold of anything: a member's held-out fold trained the others, so `evaluate --split test` must
    # refuse it rather than score it on cells it saw.
    config = {**base.training.get("config", {}), "cv_folds": 0, "cv_fold": 0}
    card.training = {**base.training, "config": config,
                     "ensemble": {"members": [str(p) for p in checkpoints], "canvas_um": canvas}}
    path = save_checkpoint(out, model, card)
    size = card.input.size[0]
    one, whole = profile_model(models[0], size), profile_model(model, size)
    info = {"path": str(path), "members": len(models), "macs": whole.macs, "member_macs": one.macs,
            "params": whole.params,
            "cost": f"{len(models)}x one model's compute and latency at run time"}
    log.info("ensemble of %d models: %s", len(models), path)
    return info
