"""The paper-style comparison on the user's data and device (issue 35).

For each model (an ALNett variant or a torchvision baseline, model/baselines.py) on one dataset:

1. cross-validation with the same recipe for every model (``train --folds K``), in ``OUT/<model>/``;
   a model whose run is there with the same settings is not run again (a run with other settings is
   refused: compare into another folder). Each fold keeps its ``best.safetensors`` and report; its
   resume state (``last.*``) is removed once the run is done (VGG16's is 1.6 GB a fold);
2. its fold-0 model exported for the chosen device profile with ``--precision auto`` (every precision
   the profile builds, gated; what fails the gate is left out, as a user's export would), in
   ``OUT/bundles/<model>-<target>/``, reused while the checkpoint is the same;
3. one ``bench`` run over every model's deployed artifacts and its PyTorch checkpoint (eager), the
   rows taken in turn round after round, so every latency ratio is measured side by side.

The table: parameters, MACs, held-out accuracy / sensitivity / specificity / F1 / AUC (mean ± std over
folds), ECE after temperature scaling (mean over folds), fp32 and int8 artifact sizes, b1 / b8 p50
latency of the fastest deployed artifact on each backend of the profile that runs here, deployed ÷
eager, and each as a ratio to the reference model (the first ALNett variant asked, else the first
model). Written as ``compare.md``, ``compare.json`` and ``compare.png`` (accuracy against batch-1
latency).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from alnett_edge.bench.runner import BenchOptions, p50_ratios, run_bench
from alnett_edge.errors import ConfigError
from alnett_edge.export.exporter import GateFailed, export_bundle
from alnett_edge.files import sha256_file
from alnett_edge.model.checkpoint import load_checkpoint
from alnett_edge.model.profile import profile_model
from alnett_edge.model.registry import check_model
from alnett_edge.train.cv import cross_validate
from alnett_edge.train.loop import RESUME_FILES, TrainConfig

log = logging.getLogger(__name__)

METRICS = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc")
RUN_FILE = "compare_run.json"  # the settings a model's run was made with (what "already run" means)


@dataclass(frozen=True)
class CompareConfig:
    data: str
    models: tuple[str, ...]
    out: str = "runs/compare"
    folds: int = 5
    input_size: int | None = None  # None: each model's default (224 for the baselines)
    epochs: int = 30
    seed: int = 0
    stain: str = "auto"
    colour_jitter: tuple[float, float] = (0.0, 0.0)
    workers: int = 2
    target: str = "x86-cpu"
    batches: tuple[int, ...] = (1, 8)
    runs: int = 100
    rounds: int = 3
    threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # more TrainConfig fields, the same for every model

    def validate(self) -> None:
        if len(self.models) < 2:
            raise ConfigError("compare needs at least two models, e.g. --models alnett-s,mobilenet_v3_small")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"--models names a model twice: {', '.join(self.models)}")
        for m in self.models:
            check_model(m)
        if self.folds < 2:
            raise ConfigError(f"--folds must be >= 2, got {self.folds}")
        self.train_config(self.models[0], Path(self.out)).validate()  # the shared recipe, before any training

    def train_config(self, model: str, run: Path) -> TrainConfig:
        """The recipe every model is trained with (``run``: that model's folder)."""
        tcfg = TrainConfig(data=self.data, out=str(run), variant=model, input_size=self.input_size, epochs=self.epochs,
                           seed=self.seed, stain=self.stain, colour_jitter=self.colour_jitter, workers=self.workers)
        return replace(tcfg, **self.extra)

    def train_settings(self) -> dict[str, Any]:
        """What a model's run depends on: a run made with other settings is not this comparison's."""
        return {"data": str(Path(self.data).resolve()), "folds": self.folds, "input_size": self.input_size,
                "epochs": self.epochs, "seed": self.seed, "stain": self.stain,
                "colour_jitter": list(self.colour_jitter), **self.extra}


def reference_model(models: tuple[str, ...]) -> str:
    return next((m for m in models if m.startswith("alnett")), models[0])


def _cv(cfg: CompareConfig, model: str, progress: bool) -> dict[str, Any]:
    """The model's cross-validation report: the one in OUT/<model> when it was made with these settings."""
    run = Path(cfg.out) / model
    settings = cfg.train_settings()
    done = run / "cv_report.json"
    if done.is_file() and (run / RUN_FILE).is_file():
        was = json.loads((run / RUN_FILE).read_text())
        if was != settings:
            diff = ", ".join(f"{k} {was.get(k)!r} -> {v!r}" for k, v in settings.items() if was.get(k) != v)
            raise ConfigError(f"{run} was run with other settings ({diff}); compare into another --out")
        log.info("%s: already run (%s), not run again", model, done)
        return json.loads(done.read_text())
    report = cross_validate(cfg.train_config(model, run), cfg.folds, progress=progress)
    for fold in run.glob("fold_*"):  # resume state of finished folds: VGG16's is 1.6 GB a fold
        for name in RESUME_FILES:
            (fold / name).unlink(missing_ok=True)
    (run / RUN_FILE).write_text(json.dumps(settings, indent=2))
    return report


def _bundle(cfg: CompareConfig, model: str, checkpoint: Path) -> dict[str, Any]:
    """The fold-0 model exported for the target (reused while it comes from the same checkpoint)."""
    out = Path(cfg.out) / "bundles" / f"{model}-{cfg.target}"
    manifest = out / "manifest.json"
    sha = sha256_file(checkpoint)
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("source_checkpoint", {}).get("sha256") == sha and m.get("status") == "ok":
            return {**m, "bundle": str(out)}
    try:
        return export_bundle(checkpoint, cfg.target, out, precision="auto", force=True)
    except GateFailed as exc:  # nothing passed: the model has no deployed row, and the table says why
        return {"status": "failed", "error": str(exc)}


def _sizes(manifest: dict[str, Any]) -> dict[str, int | None]:
    arts = manifest.get("artifacts", []) + manifest.get("rejected_by_gate", [])
    size = {}
    for prec in ("fp32", "int8"):
        found = [a["bytes"] for a in arts if a.get("precision") == prec and a.get("bytes")]
        size[f"{prec}_bytes"] = min(found) if found else None
    return size


def _latencies(rows: list[dict[str, Any]], batches: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Per backend: the fastest deployed row at batch 1 (its artifact and p50 at every batch)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        b1 = r.get("batches", {}).get(str(batches[0]))
        if not b1:
            continue
        cur = best.get(r["backend"])
        if cur is None or b1["p50_ms"] < cur["batches"][str(batches[0])]["p50_ms"]:
            best[r["backend"]] = r
    return best


def compare(cfg: CompareConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or reuse) every model's cross-validation and export, bench them in one run, write the table."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ref = reference_model(cfg.models)
    entries: dict[str, dict[str, Any]] = {}
    for model in cfg.models:
        cv = _cv(cfg, model, progress)
        ckpt = Path(cv["per_fold"][0]["checkpoint"])
        net, card = load_checkpoint(ckpt)
        prof = profile_model(net, card.input.size[0])
        manifest = _bundle(cfg, model, ckpt)
        entries[model] = {
            "model": model, "input_size": card.input.size[0], "params": prof.params, "macs": prof.macs,
            "cv": {k: cv["summary"][k] for k in (*METRICS, "ece")}, "pooled_ece": cv["pooled"]["ece"],
            "train_seconds": cv["seconds"], "checkpoint": str(ckpt), "bundle": manifest.get("bundle"),
            "export": {"status": manifest.get("status"), "error": manifest.get("error"),
                       "selected": manifest.get("selected"),
                       "rejected_by_gate": [a["file"] for a in manifest.get("rejected_by_gate", [])]},
            **_sizes(manifest),
        }
    targets = [Path(e["bundle"]) for e in entries.values() if e["bundle"]]
    targets += [Path(e["checkpoint"]) for e in entries.values()]
    opts = BenchOptions(backends=["all"], batches=list(cfg.batches), threads=cfg.threads, runs=cfg.runs,
                        rounds=cfg.rounds)
    bench = run_bench(targets, opts)
    by_model: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.models}
    for r in bench["rows"]:
        owner = next((m for m, e in entries.items() if r["model"] in (e["bundle"], e["checkpoint"])), None)
        if owner is not None and "batches" in r:
            by_model[owner].append(r)
    eager_of = {m: next((r for r in rows if r["format"] == "checkpoint"), None) for m, rows in by_model.items()}
    deployed_of = {m: _latencies([r for r in rows if r["format"] != "checkpoint"], cfg.batches)
                   for m, rows in by_model.items()}
    for m, e in entries.items():
        lat = {}
        for backend, r in deployed_of[m].items():
            row = {"artifact": r["artifact"], "precision": r["precision"],
                   "p50_ms": {b: r["batches"][b]["p50_ms"] for b in r["batches"]}}
            ref_row = deployed_of[ref].get(backend)
            if ref_row is not None:
                row["vs_ref"] = p50_ratios(r, ref_row)["p50_ratio"]
            eager = eager_of[m]
            if eager is not None:
                row["vs_eager"] = p50_ratios(r, eager)["p50_ratio"]
            lat[backend] = row
        e["latency"] = lat
        if eager_of[m] is not None:
            e["eager_p50_ms"] = {b: v["p50_ms"] for b, v in eager_of[m]["batches"].items()}
        r0 = entries[ref]
        e["vs_ref"] = {
            "params": round(e["params"] / r0["params"], 3), "macs": round(e["macs"] / r0["macs"], 3),
            **{k: round(e["cv"][k]["mean"] - r0["cv"][k]["mean"], 4) for k in METRICS
               if e["cv"][k]["mean"] is not None and r0["cv"][k]["mean"] is not None},
            **{f"{p}_bytes": round(e[f"{p}_bytes"] / r0[f"{p}_bytes"], 3) for p in ("fp32", "int8")
               if e[f"{p}_bytes"] and r0[f"{p}_bytes"]},
        }
    report = {"data": cfg.data, "reference": ref, "settings": {**asdict(cfg), "models": list(cfg.models)},
              "machine": bench["machine"], "models": list(entries.values()),
              "note": "metrics: held-out folds, mean and std over folds; ece after temperature scaling, mean over "
                      "folds; sizes and latency: the fold-0 model exported with --precision auto (what fails the "
                      "gate is left out); latency: p50 ms of the fastest deployed artifact per backend, every row "
                      "timed in turn round after round in one run; vs_ref: ratio to the reference model (metrics: "
                      "difference in points of 1), round by round; vs_eager: deployed / PyTorch eager"}
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    (out / "compare.md").write_text(markdown(report))
    plot(report, out / "compare.png")
    return report


def _pm(stat: dict[str, Any]) -> str:
    return "n/a" if stat["mean"] is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    m = report["machine"]
    backends = sorted({b for e in report["models"] for b in e["latency"]})
    b1, b8 = (str(b) for b in ([*s["batches"], s["batches"][0]])[:2])
    head = ["model", "params", "MACs", "accuracy", "sensitivity", "specificity", "F1", "AUC", "ECE", "fp32 MB",
            "int8 MB", *[f"{b} b{b1} / b{b8} ms" for b in backends], "deployed ÷ eager (b1)"]
    lines = [f"# ALNett and the alternatives on {report['data']}", "",
             f"{s['folds']}-fold cross-validation, {s['epochs']} epochs, seed {s['seed']}, input "
             f"{s['input_size'] or 'each model’s default'} px; deployed for `{s['target']}`; timed on {m['isa']} "
             f"({m['cores']} cores), {s['rounds']} rounds of "
             f"{s['runs']} calls. Ratios in brackets are to `{report['reference']}`. {report['note']}.", "",
             "| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for e in report["models"]:
        r = e["vs_ref"]

        def mb(p: str) -> str:
            v = e[f"{p}_bytes"]
            return "—" if v is None else f"{v / 1e6:.2f} (×{r.get(f'{p}_bytes', float('nan')):.2f})"

        cells = [f"`{e['model']}`", f"{e['params'] / 1e6:.2f} M (×{r['params']:.2f})",
                 f"{e['macs'] / 1e6:.1f} M (×{r['macs']:.2f})",
                 *[_pm(e["cv"][k]) for k in METRICS], f"{e['cv']['ece']['mean']:.3f}", mb("fp32"), mb("int8")]
        for b in backends:
            lat = e["latency"].get(b)
            if lat is None:
                cells.append("—")
                continue
            ratio = lat.get("vs_ref", {}).get(b1)
            cells.append(f"{lat['p50_ms'].get(b1, float('nan')):.2f} / {lat['p50_ms'].get(b8, float('nan')):.2f}"
                         + (f" (×{ratio:.2f})" if ratio is not None else ""))
        eager = [lat["vs_eager"][b1] for lat in e["latency"].values() if b1 in lat.get("vs_eager", {})]
        cells.append(f"{min(eager):.2f}" if eager else "—")
        lines.append("| " + " | ".join(cells) + " |")
    failed = [e for e in report["models"] if e["export"]["status"] != "ok"]
    for e in failed:
        lines.append(f"\n`{e['model']}`: no deployed artifact ({e['export']['error']}).")
    return "\n".join(lines) + "\n"


#: where a point's label may go (offset points, alignment), tried in turn until it overlaps no other label
LABEL_OFFSETS = ((5, 4, "left"), (-5, -12, "right"), (5, -12, "left"), (-5, 4, "right"), (5, 16, "left"),
                 (-5, 16, "right"))


def plot(report: dict[str, Any], dest: Path) -> Path:
    """Accuracy (mean ± std over folds) against the fastest deployed batch-1 latency, one point a model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b1 = str(report["settings"]["batches"][0])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = []
    for e in report["models"]:
        lats = [lat["p50_ms"][b1] for lat in e["latency"].values() if b1 in lat["p50_ms"]]
        if lats and e["cv"]["accuracy"]["mean"] is not None:
            points.append((min(lats), e))
    for lat, e in points:
        acc = e["cv"]["accuracy"]
        colour = "tab:red" if e["model"].startswith("alnett") else "tab:blue"
        ax.errorbar(lat, acc["mean"], yerr=acc["std"], fmt="o", color=colour, capsize=3)
    ax.set_xscale("log")
    renderer = fig.canvas.get_renderer()
    taken: list[Any] = []  # the labels placed so far (display boxes): a label takes the first offset clear of them
    for lat, e in sorted(points, key=lambda p: p[0]):
        for dx, dy, ha in LABEL_OFFSETS:
            label = ax.annotate(e["model"], (lat, e["cv"]["accuracy"]["mean"]), textcoords="offset points",
                                xytext=(dx, dy), ha=ha, fontsize=8)
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(t) for t in taken) or (dx, dy, ha) == LABEL_OFFSETS[-1]:
                taken.append(box)
                break
            label.remove()
    ax.set_xlabel(f"batch-{b1} latency, fastest deployed artifact (p50 ms, log)")
    ax.set_ylabel("held-out accuracy (mean ± std over folds)")
    m = report["machine"]
    ax.set_title(f"{Path(report['data']).name}: {report['settings']['folds']}-fold CV; {m['isa']}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest
