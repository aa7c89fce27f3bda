"""``alnett-edge bench``: every artifact of every bundle (or ONNX / checkpoint) on every asked
backend and batch size, one row each, in one table, JSON and a latency plot.

Each row runs in a fresh process (:mod:`alnett_edge.bench.worker`) so its load time, first inference
and peak RSS are its own. Inputs are real preprocessed images: the ``--images`` folder when given
(labelled layouts also give accuracy, sensitivity and specificity), else the bundle's golden gate
images; random inputs only with ``random_inputs`` and the report says so. Agreement is top-1 against
the fp32 reference row (the PyTorch checkpoint when one is benchmarked, else the fp32 ONNX on ONNX
Runtime). Achieved GFLOP/s = 2 x MACs x batch / mean latency, against the machine's fp32 peak.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alnett_edge.bench.system import machine_info
from alnett_edge.card import InputSpec, blast_sum
from alnett_edge.data.preprocess import training_sides
from alnett_edge.errors import ConfigError
from alnett_edge.files import load_plain_npy
from alnett_edge.runtime.base import BACKENDS, backend_formats, unavailable_reason
from alnett_edge.runtime.loader import Target, anchor_target, backend_order, targets_of
from alnett_edge.timing import summarize

log = logging.getLogger(__name__)

#: the backends that run a training checkpoint as the fp32 reference (--reference)
REFERENCE_BACKENDS = [b for b, spec in BACKENDS.items() if spec.reference]

MAX_IMAGES = 256


MAX_BATCH = 256  # largest --batch: memory stays bounded on a device
MAX_ROUNDS = 50

@dataclass
class BenchOptions:
    backends: list[str] = field(default_factory=lambda: ["auto"])  # "auto", "all" or backend names
    batches: list[int] = field(default_factory=lambda: [1, 8])
    threads: int = 0
    images: Path | None = None
    random_inputs: bool = False
    warmup: int = 10
    runs: int | None = 200
    duration: float | None = None
    max_seconds: float = 20.0
    op_profile: bool = False
    reference: Path | None = None  # an fp32 checkpoint for the PyTorch-eager row
    peak_gflops: float | None = None
    any_size: bool = False
    limit: int = MAX_IMAGES
    anchors: list[Path] = field(default_factory=list)  # plain ONNX classifiers timed alongside (--anchor)
    rounds: int = 1  # every row this many times, in turn (--rounds): ratios compared round by round

    def validate(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise ConfigError("--batch needs sizes >= 1, e.g. --batch 1,8")
        if max(self.batches) > MAX_BATCH:  # activations grow with the batch: 100000 took 12 GB of RSS
            raise ConfigError(f"--batch sizes go up to {MAX_BATCH} (got {max(self.batches)}); throughput stops "
                              "growing long before that")
        if self.runs is not None and self.runs < 1:
            raise ConfigError("--runs must be >= 1")
        for name, value in (("--duration", self.duration), ("--max-seconds", self.max_seconds)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value}")
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise ConfigError(f"--rounds must be 1 to {MAX_ROUNDS}, got {self.rounds}")
        if self.warmup < 0 or self.threads < 0:
            raise ConfigError("--warmup and --threads must be >= 0")
        for b in self.backends:
            if b not in ("auto", "all") and b not in BACKENDS:
                raise ConfigError(f"unknown backend {b!r}; use auto, all or one of {', '.join(BACKENDS)}")


@dataclass
class Inputs:
    x: np.ndarray
    labels: np.ndarray | None
    source: str


def load_inputs(card_input: InputSpec, opts: BenchOptions, golden: Path | None, expected_size: tuple[int, int] | None,
                anchor: bool = False) -> Inputs:
    if opts.images is not None:
        from alnett_edge.data.preprocess import load_image, preprocess
        from alnett_edge.evaluation import images_of

        samples = images_of(opts.images, what="--images")
        files = [s.path for s in samples]
        labels = np.array([s.label for s in samples]) if all(s.label >= 0 for s in samples) else None
        if len(files) > opts.limit:  # a fixed, class-mixed subset
            idx = np.sort(np.random.default_rng(0).choice(len(files), opts.limit, replace=False))
            files = [files[i] for i in idx]
            labels = labels[idx] if labels is not None else None
        x = np.stack([preprocess(load_image(f, strict=True, expected_size=expected_size, allow_any_size=opts.any_size), card_input) for f in files])
        return Inputs(x, labels, f"{len(files)} images from {opts.images}" + (" (labelled)" if labels is not None else ""))
    if opts.random_inputs or anchor:  # an anchor has no preprocessing contract: its latency is all we ask
        shape = (3, *card_input.size) if card_input.layout == "NCHW" else (*card_input.size, 3)
        x = np.random.default_rng(0).standard_normal((32, *shape)).astype(np.float32)
        return Inputs(x, None, "RANDOM inputs (--random): latency only, no accuracy" if not anchor
                      else "random inputs of the anchor's shape (speed anchor: latency only)")
    if golden is not None and golden.is_file():
        x = load_plain_npy(golden)
        return Inputs(x, None, f"{len(x)} golden gate images of the bundle (real, preprocessed at export)")
    raise ConfigError("give --images DIR (real cell images) or --random; this model has no golden images")


def _backends_for(target: Target, wanted: list[str]) -> list[tuple[str, str | None]]:
    """(backend, reason it cannot run or None) for one target."""
    order = backend_order(target)
    if "all" in wanted:
        names = order
    elif "auto" in wanted:
        usable = [b for b in order if unavailable_reason(b) is None]
        names = usable[:1] or order[:1]
    else:
        names = [b for b in wanted if target.format in backend_formats(b)]
    return [(b, unavailable_reason(b)) for b in names]


def plan(models: list[str | Path], opts: BenchOptions) -> list[dict[str, Any]]:
    rows = []
    paths = [Path(m) for m in models] + ([opts.reference] if opts.reference else [])
    for path in paths:
        for target in targets_of(path):
            for backend, reason in _backends_for(target, opts.backends if path != opts.reference else REFERENCE_BACKENDS):
                rows.append({"model": str(path), "target": target, "backend": backend, "skip": reason})
    for path in opts.anchors:  # the same backends, batches, threads and runs: ratios from one run
        target = anchor_target(path)
        for backend, reason in _backends_for(target, opts.backends):
            rows.append({"model": str(path), "target": target, "backend": backend, "skip": reason, "anchor": True})
    if not rows:
        raise ConfigError("nothing to benchmark: no artifact runs on the asked backends")
    return rows


def _source_sha(target: Target) -> str | None:
    """The fp32 checkpoint a model came from (bundles record it; a checkpoint is its own source)."""
    if target.bundle is not None:
        return target.bundle.manifest.get("source_checkpoint", {}).get("sha256")
    if target.format == "checkpoint":
        from alnett_edge.files import sha256_file

        return sha256_file(target.path)
    return None


def run_bench(models: list[str | Path], opts: BenchOptions) -> dict[str, Any]:
    opts.validate()
    rows = plan(models, opts)
    machine = machine_info(opts.peak_gflops)
    inputs: dict[tuple[str, str], tuple[Inputs, Path]] = {}
    # a checkpoint (the PyTorch reference) runs on the golden images of the bundle exported from it
    golden_of = {_source_sha(r["target"]): r["target"].bundle.root / "golden" / "inputs.npy"
                 for r in rows if r["target"].bundle is not None}
    results, jobs = [], []
    with tempfile.TemporaryDirectory(prefix="alnett-bench-") as tmp:
        for row in rows:
            target: Target = row["target"]
            entry: dict[str, Any] = {
                "model": row["model"], "artifact": target.path.name, "format": target.format,
                "precision": target.artifact.get("precision", "fp32"), "backend": row["backend"],
                "bytes": target.path.stat().st_size, "threads": opts.threads or machine["cores"],
                "source_sha256": _source_sha(target),
            }  # fmt: skip
            if row["skip"]:
                results.append({**entry, "skipped": row["skip"]})
                continue
            anchor = bool(row.get("anchor"))
            entry["anchor"] = anchor
            golden = target.bundle.root / "golden" / "inputs.npy" if target.bundle else golden_of.get(entry["source_sha256"])
            key = (repr(target.card.input), "" if opts.images or opts.random_inputs or golden is None else str(golden))
            if key not in inputs:
                inp = load_inputs(target.card.input, opts, golden, training_sides(target.card.training), anchor)
                inputs[key] = (inp, Path(tmp) / f"inputs{len(inputs)}.npy")
                np.save(inputs[key][1], inp.x)
            inp, inp_file = inputs[key]
            spec = {"model": row["model"], "file": target.path.name, "backend": row["backend"], "threads": opts.threads,
                    "inputs": str(inp_file), "batches": opts.batches, "warmup": opts.warmup, "runs": opts.runs,
                    "duration": opts.duration, "max_seconds": opts.max_seconds, "predict": True,
                    "op_profile": opts.op_profile, "anchor": anchor,
                    "cpu": True}
            entry.update(inputs=inp.source, _inputs_key=key)
            results.append(entry)
            jobs.append((entry, spec, target, inp))
        # rows run in turn, round after round: a shared machine's speed shifts for seconds at a time,
        # and a row's ratio to an anchor is then taken within each round; predictions and the operator
        # profile come from the first round
        outs: list[list[dict[str, Any]]] = [[] for _ in jobs]
        for k in range(opts.rounds):
            for i, (entry, spec, _, _) in enumerate(jobs):
                log.info("bench %d/%d%s: %s on %s", i + 1, len(jobs), f" round {k + 1}/{opts.rounds}" if opts.rounds > 1
                         else "", entry["artifact"], entry["backend"])
                again = {"predict": False, "op_profile": False} if k else {}
                outs[i].append(_run_worker({**spec, **again}, Path(tmp) / f"row{i}-{k}"))
        for (entry, _, target, inp), row_outs in zip(jobs, outs):
            out = merge_rounds(row_outs)
            if "error" in out:
                entry["error"] = out["error"]
                continue
            macs = out.pop("macs", None) or (target.bundle.manifest.get("model", {}).get("macs") if target.bundle else None)
            entry.update(out, macs=macs, _probs=np.asarray(out.pop("probs")),
                         _labels=None if entry["anchor"] else inp.labels, _blast=target.card.blast_columns)
    disambiguate(results)
    _accuracy_and_agreement(results)
    _fill_macs(results)
    _flops(results, machine)
    for r in results:
        r.pop("_inputs_key", None)
    return {"machine": machine, "options": _opts_dict(opts), "rows": results, "anchor_ratios": anchor_ratios(results),
            "eager_ratios": eager_ratios(results)}


def disambiguate(rows: list[dict[str, Any]]) -> None:
    """Two rows with the same artifact name (two bundles' ``model.fp32.onnx``, two runs'
    ``best.safetensors``) are named with their folder too, so the table and the ratios tell them apart."""
    seen = Counter((r["artifact"], r["model"]) for r in rows)
    names = Counter(name for name, _ in seen)
    for r in rows:
        if names[r["artifact"]] > 1:
            p = Path(r["model"])
            r["artifact"] = f"{p.name if p.is_dir() else p.parent.name}/{r['artifact']}"


def merge_rounds(outs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from its rounds: the first round's output (load, first call, predictions, profile) with
    every round's samples pooled into the percentiles, each round's p50 in ``round_p50_ms`` and the
    largest RSS; an error in any round is the row's error."""
    bad = next((o for o in outs if "error" in o), None)
    if bad is not None or len(outs) == 1:
        return bad or outs[0]
    out = outs[0]
    for b, lat in out["batches"].items():
        lats = [o["batches"][b] for o in outs]
        samples = [x for lt in lats for x in lt["samples_ms"]]
        pooled = summarize(samples, int(b), lat["threads"]).to_dict()
        lat.update(pooled, throughput_ips=round(int(b) * 1e3 / pooled["mean_ms"], 2), samples_ms=samples,
                   round_p50_ms=[round(lt["p50_ms"], 4) for lt in lats], rss_mb=max(lt["rss_mb"] for lt in lats),
                   note="; ".join(sorted({lt["note"] for lt in lats if lt.get("note")})))
    out["peak_rss_mb"] = max(o["peak_rss_mb"] for o in outs)
    return out


def anchor_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """p50 latency of every model row / the same backend's anchor row, per batch size (< 1: faster).
    With rounds (``--rounds``), the median of the rounds' ratios, and their range in ``p50_ratio_range``."""
    out = []
    for a in (r for r in rows if r.get("anchor") and "batches" in r):
        for r in (r for r in rows if not r.get("anchor") and "batches" in r and r["backend"] == a["backend"]):
            out.append({"artifact": r["artifact"], "precision": r["precision"], "anchor": a["artifact"],
                        "backend": a["backend"], **p50_ratios(r, a)})
    return out


def eager_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """p50 latency of every deployed row / PyTorch eager on the checkpoint it was exported from (a
    checkpoint among the models, or ``--reference``), per batch size, taken like ``anchor_ratios``:
    what deployment buys over running the training code."""
    eager = {r["source_sha256"]: r for r in rows
             if r["backend"] in REFERENCE_BACKENDS and r.get("source_sha256") and "batches" in r}
    return [{"artifact": r["artifact"], "precision": r["precision"], "backend": r["backend"],
             "eager": eager[r["source_sha256"]]["artifact"], **p50_ratios(r, eager[r["source_sha256"]])}
            for r in rows if r["backend"] not in REFERENCE_BACKENDS and not r.get("anchor") and "batches" in r
            and r.get("source_sha256") in eager]


def _sig3(x: float) -> float:
    """Three significant figures (a ratio of 0.0044, a slow eager reference on a busy machine, is not 0.004)."""
    return float(f"{float(x):.3g}")


def p50_ratios(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """``p50_ratio`` (and with rounds ``p50_ratio_range``) of ``row`` to ``ref`` per batch size both ran:
    every row ran the same rounds, so the ratio is taken round by round and its median kept."""
    ratios, spread = {}, {}
    for b, lat in row["batches"].items():
        base = ref["batches"].get(b)
        if not base or base["p50_ms"] <= 0:
            continue
        per_round = np.asarray(lat.get("round_p50_ms", [lat["p50_ms"]])) / \
            np.asarray(base.get("round_p50_ms", [base["p50_ms"]]))
        ratios[b] = _sig3(np.median(per_round))
        if len(per_round) > 1:
            spread[b] = [_sig3(per_round.min()), _sig3(per_round.max())]
    return {"p50_ratio": ratios, **({"p50_ratio_range": spread} if spread else {})}


def _run_worker(spec: dict[str, Any], stem: Path) -> dict[str, Any]:
    spec_file, out_file = stem.with_suffix(".spec.json"), stem.with_suffix(".out.json")
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "alnett_edge.bench.worker", str(spec_file), str(out_file)],
                          capture_output=True, text=True, env=env)
    if not out_file.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": f"benchmark process died: {tail[0][:200]}"}
    return json.loads(out_file.read_text())


def _reference_for(row: dict[str, Any], ran: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fp32 reference of a row: the PyTorch checkpoint it was exported from, else the fp32 ONNX of
    the same bundle on ONNX Runtime; always on the same inputs."""
    same = [r for r in ran if r["_inputs_key"] == row["_inputs_key"]]
    return next((r for r in same if r["backend"] in REFERENCE_BACKENDS and r["source_sha256"] == row["source_sha256"]),
                None) or next((r for r in same if r["model"] == row["model"] and r["precision"] == "fp32"
                               and r["backend"] not in REFERENCE_BACKENDS), None)


def _accuracy_and_agreement(rows: list[dict[str, Any]]) -> None:
    from alnett_edge.metrics import binary_metrics, device_agreement, top1_agreement

    ran = [r for r in rows if "_probs" in r]
    for r in ran:
        probs, labels = r["_probs"], r["_labels"]
        if labels is not None:
            m = binary_metrics(labels, blast_sum(probs, r["_blast"]))
            r.update(accuracy=m["accuracy"], sensitivity=m["sensitivity"], specificity=m["specificity"])
        ref = None if r.get("anchor") else _reference_for(r, [x for x in ran if not x.get("anchor")])
        if ref is not None:
            r["reference"] = f"{ref['artifact']} on {ref['backend']}"
            a, b = blast_sum(ref["_probs"], r["_blast"]), blast_sum(probs, r["_blast"])
            r["agreement"], r["top1_agreement"] = device_agreement(a, b), top1_agreement(a, b)
    for r in ran:
        del r["_probs"], r["_labels"], r["_blast"]


def _fill_macs(rows: list[dict[str, Any]]) -> None:
    """Rows without MACs (an older bundle, a bare ONNX) take them from a benchmarked source checkpoint."""
    known = {r["source_sha256"]: r["macs"] for r in rows if r.get("macs") and r.get("source_sha256")}
    for r in rows:
        if not r.get("macs") and r.get("source_sha256") in known:
            r["macs"] = known[r["source_sha256"]]


def _flops(rows: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    peak = machine.get("peak_gflops")
    for r in rows:
        if not r.get("macs") or "batches" not in r:
            continue
        for b, lat in r["batches"].items():
            gflops = 2 * r["macs"] * int(b) / (lat["mean_ms"] * 1e6)
            lat["gflops"] = round(gflops, 2)
            lat["peak_share"] = round(gflops / peak, 4) if peak else None


def _opts_dict(opts: BenchOptions) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return str(v) if isinstance(v, Path) else [plain(x) for x in v] if isinstance(v, list) else v

    return {k: plain(v) for k, v in opts.__dict__.items()}


def write_json(report: dict[str, Any], dest: str | Path, samples: bool = True) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(report))
    if not samples:
        for r in data["rows"]:
            for lat in r.get("batches", {}).values():
                lat.pop("samples_ms", None)
    dest.write_text(json.dumps(data, indent=2))
    return dest


def plot_latency(report: dict[str, Any], dest: str | Path) -> Path:
    """A PNG: latency distribution (box + points) per row and batch size, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(f"{r['artifact']}\n{r['backend']} b{b}", lat["samples_ms"]) for r in report["rows"]
              for b, lat in r.get("batches", {}).items()]
    if not series:
        raise ConfigError("no row ran, nothing to plot")
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(series)), 4.5))
    ax.boxplot([s for _, s in series], whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(series) + 1), [n for n, _ in series], fontsize=7, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("latency per call (ms, log)")
    m = report["machine"]
    ax.set_title(f"alnett-edge bench: {m['cpu']} ({m['cores']} cores, {m['simd']}, int8 kernel {m.get('int8_kernel')}); "
                 "whiskers p1-p99", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    dest = Path(dest)
    dest = dest if dest.suffix else dest.with_suffix(".png")  # what matplotlib would write; say the real name
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest
