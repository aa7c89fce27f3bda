"""``alnett-edge verify``, ``predict`` and ``bench``: the device-side commands (no torch needed,
except for a PyTorch reference row in bench)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.table import Table

from alnett_edge.cli.common import NARROW, WIDE_HELP, change, console, echo_wrapped, output_file
from alnett_edge.errors import ConfigError
from alnett_edge.metrics import DEFAULT_MIN_CONFIDENCE
from alnett_edge.runtime.base import BACKENDS

BACKEND_HELP = f"{', '.join(BACKENDS)} (default: the device profile's order, first one installed here)."


def _f(value: object, fmt: str = "{:.3f}") -> str:
    return "" if value is None else fmt.format(value)


#: the columns of the default (narrow) bench table; --wide shows every one
NARROW_BENCH = ("artifact", "prec", "backend", "batch", "p50", "p99", "img/s", "RSS MB", "acc", "agree")


def bench_table(report: dict, wide: bool = False) -> Table:
    m = report["machine"]
    table = Table(title=f"{m.get('isa') or m['cpu'] + ' | ' + m['simd']} | {m['cores']} cores | peak "
                        f"~{m['peak_gflops']} GFLOP/s fp32 | load {m['loadavg_1m']}", title_justify="left")
    cols = ("artifact", "prec", "backend", "MB", "load s", "first ms", "batch", "min", "mean", "p50", "p90", "p99",
            "max", "img/s", "GFLOP/s", "%peak", "RSS MB", "acc", "sens", "spec", "agree")
    labelled = any(r.get("accuracy") is not None for r in report["rows"])
    keep = [i for i, c in enumerate(cols) if wide or (c in NARROW_BENCH and (c != "acc" or labelled))]
    for i in keep:
        c = cols[i]
        if c == "artifact" and not wide:  # "folder/artifact" (two rows with one name) takes two lines
            table.add_column(c, justify="left", overflow="ellipsis", max_width=24)
        else:
            table.add_column(c, justify="left" if c in ("artifact", "prec", "backend") else "right", no_wrap=True)
    ms, ips = ("{:.3f}", "{:.1f}") if wide else ("{:.2f}", "{:.0f}")

    def add(*cells: str) -> None:
        table.add_row(*(cells[i] for i in keep))

    for r in report["rows"]:
        name = r["artifact"] if wide else r["artifact"].replace("/", "/\n", 1)
        head = [name, r["precision"], r["backend"], f"{r['bytes'] / 1e6:.2f}"]
        if "skipped" in r or "error" in r:
            why = f"{'skipped' if 'skipped' in r else 'error'}: {r.get('skipped') or r.get('error')}"
            table.add_row(*[head[i] for i in keep if i < 3], f"[yellow]{why[:60 if not wide else 120]}",
                          *[""] * (len(keep) - 4))
            continue
        for i, (b, lat) in enumerate(r["batches"].items()):
            first = [f"{r['load_s']:.2f}", f"{r['first_inference_ms']:.1f}"] if i == 0 else ["", ""]
            tail = [_f(r.get("accuracy"), "{:.4f}"), _f(r.get("sensitivity"), "{:.4f}"),
                    _f(r.get("specificity"), "{:.4f}"), _f(r.get("agreement"), "{:.1%}")] if i == 0 else [""] * 4
            add(*(head if i == 0 else ["", "", "", ""]), *first, b, *(ms.format(lat[k]) for k in
                          ("min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")), ips.format(lat["throughput_ips"]),
                          _f(lat.get("gflops"), "{:.1f}"), _f(lat.get("peak_share"), "{:.1%}"), _f(lat.get("rss_mb"), "{:.0f}"), *tail)
    return table


def _regate(bundle: Path, gate_images: Path, backend: str | None, threads: int) -> dict:
    from alnett_edge.runtime.verify import regate_bundle, rows_to_dicts

    rows, info = regate_bundle(bundle, gate_images, backend, threads)
    table = Table(title=f"accuracy gate here: {info['n']} images of {gate_images}", title_justify="left")
    for c in ("artifact", "prec", "backend", "accuracy", "Δacc", "Δsens", "agree", "gate"):
        table.add_column(c, justify="left" if c in ("artifact", "prec", "backend", "gate") else "right")
    for r in rows:
        gate = "not run" if r.passed is None else "pass" if r.passed else "FAIL"
        table.add_row(r.artifact, r.precision, r.backend, _f(r.accuracy, "{:.4f}"),
                      change(r.drop_points.get("accuracy")), change(r.drop_points.get("sensitivity")),
                      _f(r.agreement, "{:.2%}"), gate)
    console().print(table)
    typer.echo(f"reference: {info['reference']}")
    echo_wrapped(f"limits (the bundle's): drop <= {info['allow_drop']} points, agreement >= {info['min_agreement']:.0%} "
                 f"(changes on cells both models hold below {DEFAULT_MIN_CONFIDENCE} not counted)")
    for r in rows:
        for line in r.failures + ([r.note] if r.note else []):
            echo_wrapped(f"{'FAIL' if r.failures and line in r.failures else 'note'}: {r.artifact}: {line}")
    return {**info, "rows": rows_to_dicts(rows)}


def _echo_ratios(head: str, entry: dict) -> None:
    """``HEAD b1 0.52, b8 0.61`` (with rounds: ``b1 0.52 (0.48-0.60)``) from a report's ratio entry; the
    ratios go on their own indented line when the two do not fit the narrow width."""
    spread = entry.get("p50_ratio_range", {})
    text = ", ".join(f"b{b} {v:.2f}" + (f" ({spread[b][0]:.2f}-{spread[b][1]:.2f})" if b in spread else "")
                     for b, v in entry["p50_ratio"].items())
    typer.echo(f"{head} {text}" if len(head) + 1 + len(text) <= NARROW else f"{head}\n    {text}")


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} takes comma-separated integers, e.g. 1,8 (got {text!r})") from None


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify(
        bundle: Path = typer.Argument(..., help="Bundle folder or .tar.gz copied to this machine."),
        backend: str = typer.Option(None, help=BACKEND_HELP),
        threads: int = typer.Option(0, min=0, help="Threads (0 = the backend's default)."),
        tolerance: float = typer.Option(None, help="Max probability difference (default by precision: fp32 1e-3, fp16 0.02, int8 0.05)."),
        gate_images: Path = typer.Option(None, help="Labelled cell images of this site: re-run the accuracy gate here "
                                         "(every artifact vs the bundle's fp32 reference, with the bundle's limits)."),
        json_out: Path = typer.Option(None, "--json", help="Write the rows as JSON.", callback=output_file),
    ) -> None:
        """Run the bundle's golden inputs here and compare with the export host's outputs
        (with --gate-images: re-run the accuracy gate on this machine)."""
        from alnett_edge.machine import isa_line
        from alnett_edge.runtime.verify import check_verified, rows_to_dicts, verify_bundle

        if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
            raise ConfigError(f"--tolerance must be a finite number >= 0, got {tolerance}")
        rows = verify_bundle(bundle, backend, threads, tolerance)
        typer.echo(f"machine: {isa_line()}")
        table = Table(title=f"verify {bundle}: golden inputs", title_justify="left")
        for c in ("artifact", "prec", "backend", "vs", "max diff", "agree", "vs fp32", "result"):
            table.add_column(c)
        for r in rows:
            result = "not run" if r.passed is None else "pass" if r.passed else "FAIL"
            table.add_row(r.artifact, r.precision, r.backend, r.compared_with, _f(r.max_abs_diff, "{:.1e}"),
                          _f(r.agreement, "{:.0%}"), _f(r.max_abs_diff_vs_fp32, "{:.1e}"), result)
        console().print(table)
        for r in rows:
            if r.note:
                typer.echo(f"note: {r.artifact}: {r.note}")
        out = {"golden": rows_to_dicts(rows)}
        if gate_images is not None:
            out["gate"] = _regate(bundle, gate_images, backend, threads)
        if json_out:
            json_out.write_text(json.dumps(out, indent=2))
        check_verified(rows, bundle)
        if gate_images is not None:
            from alnett_edge.runtime.verify import GateRow, check_regated

            check_regated([GateRow(**r) for r in out["gate"]["rows"]], bundle)

    @app.command("predict")
    def predict(
        model: Path = typer.Argument(..., help="Bundle (folder or .tar.gz), card-carrying .onnx or .safetensors."),
        images: list[Path] = typer.Argument(..., help="Cell image files and/or folders."),
        backend: str = typer.Option(None, help=BACKEND_HELP),
        artifact: str = typer.Option(None, help="Artifact file name or precision in the bundle (default: the selected one)."),
        batch: int = typer.Option(1, min=1, help="Images per inference call."),
        threads: int = typer.Option(0, min=0, help="Threads (0 = the backend's default)."),
        out: Path = typer.Option(None, "--out", "-o", help="Write predictions to .csv or .jsonl.", callback=output_file),
        ort_provider: str = typer.Option("auto", help="ONNX Runtime execution provider: auto, cpu, cuda or tensorrt."),
        any_size: bool = typer.Option(False, "--any-size", help="Accept images of another size than the training cells."),
    ) -> None:
        """Classify cell images: label, probability and latency per image."""
        from alnett_edge.runtime.loader import open_runtime
        from alnett_edge.runtime.predict import image_files, predict_files, write_predictions

        if out is not None and out.suffix not in (".csv", ".jsonl"):
            raise ConfigError(f"--out {out}: predictions are written as .csv or .jsonl")
        files = image_files(images)
        with open_runtime(model, backend, artifact, threads, provider=ort_provider) as rt:
            preds = predict_files(rt, files, batch, any_size)
        typer.echo(f"model: {rt.describe()}", err=True)
        for p in preds:
            typer.echo(f"{p.file}\t{p.label}\t{p.probability:.4f}\t{p.latency_ms:.3f} ms")
        if out:
            typer.echo(f"wrote {write_predictions(preds, out)}", err=True)

    @app.command("bench")
    def bench(
        models: list[Path] = typer.Argument(..., help="Bundles, .onnx or .safetensors (a checkpoint runs on PyTorch)."),
        backend: str = typer.Option("auto", help="auto (best installed per artifact), all, or comma-separated backends."),
        batch: str = typer.Option("1,8", help="Batch sizes, comma-separated."),
        threads: int = typer.Option(0, help="Threads per backend (0 = all cores)."),
        images: Path = typer.Option(None, help="Real cell images (a labelled layout adds accuracy); default: the bundle's golden images."),
        random_inputs: bool = typer.Option(False, "--random", help="Random inputs (latency only; said so in the output)."),
        warmup: int = typer.Option(10, help="Untimed calls before timing, per batch size."),
        runs: int = typer.Option(200, help="Timed calls per batch size (capped at --max-seconds)."),
        duration: float = typer.Option(None, help="Time for this many seconds per batch size instead of --runs."),
        max_seconds: float = typer.Option(20.0, help="Cap per batch size when using --runs."),
        reference: Path = typer.Option(None, help="fp32 .safetensors checkpoint: adds a PyTorch-eager row and is the agreement reference."),
        profile_ops: bool = typer.Option(False, "--profile-ops", help="Top operators by time (ONNX Runtime profiling)."),
        peak_gflops: float = typer.Option(None, help="This machine's fp32 peak, instead of the estimate."),
        json_out: Path = typer.Option(None, "--json", help="Write the full report (with every latency sample) as JSON.",
                                      callback=output_file),
        plot: Path = typer.Option(None, help="Write a PNG of the latency distributions.", callback=output_file),
        any_size: bool = typer.Option(False, "--any-size", help="Accept --images of another size than the training cells."),
        anchor: list[Path] = typer.Option(None, "--anchor", help="A plain classifier, .onnx or .tflite (e.g. "
                                          "../shared/anchors/mobilenet_v3_small.onnx), timed alongside on the "
                                          "backends that open it with the same options; prints each model's p50 "
                                          "latency as a ratio to it. Repeatable."),
        rounds: int = typer.Option(1, help="Run every row this many times, in turn: on a machine whose speed "
                                   "shifts (a shared VM), p50 pools the rounds and ratios to an anchor are taken "
                                   "round by round (median, range)."),
        wide: bool = typer.Option(False, "--wide", help=WIDE_HELP),
    ) -> None:
        """Latency percentiles, throughput, memory, FLOP/s and accuracy of every artifact, side by side."""
        from alnett_edge.bench.runner import BenchOptions, plot_latency, run_bench, write_json

        opts = BenchOptions(backends=[b.strip() for b in backend.split(",")], batches=_ints(batch, "--batch"),
                            threads=threads, images=images, random_inputs=random_inputs, warmup=warmup,
                            runs=None if duration else runs, duration=duration, max_seconds=max_seconds,
                            op_profile=profile_ops, reference=reference, peak_gflops=peak_gflops, any_size=any_size,
                            anchors=list(anchor or []), rounds=rounds)
        report = run_bench(models, opts)
        console(wide).print(bench_table(report, wide))
        sources = {r["inputs"] for r in report["rows"] if "inputs" in r}
        for source in sorted(sources):
            typer.echo(f"inputs: {source}")
        typer.echo("latency in ms per call; RSS MB: the row's own process after that batch size (peak in --json);\n"
                   "agree: vs the fp32 reference of the same model, as the gate counts it" + ("" if wide else "; --wide: every column"))
        for backend, note in sorted({(r["backend"], r["memory"]) for r in report["rows"] if r.get("memory")}):
            echo_wrapped(f"memory ({backend}): {note}")
        for r in (r for r in report["rows"] if r.get("batching")):
            for part in r["batching"].split("; "):  # one line a batch size
                typer.echo(f"batching, {r['artifact']} ({r['backend']}): {part}")
        per_round = f"; median of {rounds} rounds (range)" if rounds > 1 else ""
        if report["anchor_ratios"]:
            echo_wrapped(f"p50 latency / the anchor's, same backend and run (< 1: faster){per_round}:")
        for a in report["anchor_ratios"]:
            _echo_ratios(f"  {a['artifact']} vs {a['anchor']} on {a['backend']}:", a)
        if report["eager_ratios"]:
            echo_wrapped(f"p50 latency / PyTorch eager on the checkpoint it came from, same run{per_round}:")
        for e in report["eager_ratios"]:
            _echo_ratios(f"  {e['artifact']} on {e['backend']} vs {e['eager']}:", e)
        notes = {lat["note"] for r in report["rows"] for lat in r.get("batches", {}).values() if lat.get("note")}
        for note in sorted(notes):
            typer.echo(f"note: {note}")
        for r in report["rows"]:
            if r.get("op_profile"):
                ops = ", ".join(f"{o['op']} {o['share']:.0%}" for o in r["op_profile"][:6])
                typer.echo(f"top ops {r['artifact']} ({r['backend']}): {ops}")
            elif profile_ops and "batches" in r:
                hint = BACKENDS[r["backend"]].profiling
                typer.echo(f"top ops {r['artifact']} ({r['backend']}): not exposed by this backend's Python API"
                           + (f" (use {hint})" if hint else ""))
        if json_out:
            typer.echo(f"json: {write_json(report, json_out)}")
        if plot:
            typer.echo(f"plot: {plot_latency(report, plot)}")
