"""The daemon's HTTP endpoints: ``/healthz``, ``/status`` (JSON), ``/metrics`` (Prometheus, via
prometheus-client), ``/preview.mjpg`` (annotated frames, when enabled), ``POST /bundle``, ``POST /detector``,
and the device page (:mod:`alnett_edge.daemon.page`). Localhost by default; any other address needs a token,
sent as ``Authorization: Bearer TOKEN`` or the page's login cookie, never in a URL
(:mod:`alnett_edge.daemon.web`: the checks every route gets)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from alnett_edge.daemon.web import Reply, Request, bind_server, check_bind, every, make_web_handler
from alnett_edge.errors import AlnettError

if TYPE_CHECKING:  # the service imports this module
    from alnett_edge.daemon.service import Daemon

log = logging.getLogger(__name__)


class DaemonCollector:
    """Prometheus metrics read from the daemon's status at scrape time."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self):  # noqa: ANN201 - prometheus collector protocol
        st = self.daemon.status()
        cap, agg = st["capture"], st["session"]
        for name, value, doc in (("frames_captured", cap["frames"], "frames read from the source"),
                                 ("frames_processed", st["frames_processed"], "frames through the whole pipeline"),
                                 ("frames_dropped", st["frames_dropped"], "frames dropped because the queue was full"),
                                 ("source_stalls", cap["stalls"], "source stalls and read errors"),
                                 ("source_reconnects", cap["reconnects"], "successful source reopenings"),
                                 ("observations", st["observations"], "cell detections, every frame"),
                                 ("inferences", st["inferences"], "cell crops the model ran on")):
            yield CounterMetricFamily(f"alnett_{name}", doc, value=value)
        cells = CounterMetricFamily("alnett_cells", "distinct cells (tracks) decided, by outcome", labels=["outcome"])
        for label, n in agg["labels"].items():
            cells.add_metric([label], n)
        for reason, n in agg["abstained"].items():
            cells.add_metric([f"abstain:{reason}"], n)
        yield cells
        yield CounterMetricFamily("alnett_smudge_cells", "smudge cells, counted apart from the cells",
                                  value=agg.get("smudges", 0))
        yield GaugeMetricFamily("alnett_queue_depth", "frames waiting", value=st["queue_depth"])
        yield GaugeMetricFamily("alnett_fps", "processed frames per second (recent)", value=st["fps"])
        if agg["blast_ratio"] is not None:
            yield GaugeMetricFamily("alnett_blast_ratio", "blasts / classified cells this session", value=agg["blast_ratio"])
        if agg.get("blast_ratio_estimate"):
            est = agg["blast_ratio_estimate"]
            g = GaugeMetricFamily("alnett_blast_ratio_estimate", "the slide's blast ratio, edge- and error-corrected, "
                                  "with its 95 % interval", labels=["bound"])
            for bound, v in (("value", est["value"]), ("ci95_low", est["ci95"][0]), ("ci95_high", est["ci95"][1])):
                g.add_metric([bound], v)
            yield g
        lat = GaugeMetricFamily("alnett_stage_latency_ms", "per-stage latency percentiles", labels=["stage", "quantile"])
        for stage, s in st["stages"].items():
            for q in ("p50", "p95", "p99"):
                lat.add_metric([stage, q], s[f"{q}_ms"])
        yield lat


class DaemonRoutes:
    """``/healthz``, ``/status``, ``/metrics``, ``/preview.mjpg`` (with ``[http] preview``), ``POST /bundle`` and
    ``POST /detector``."""

    def __init__(self, daemon: Daemon, preview: bool, token: str, registry: CollectorRegistry) -> None:
        self.daemon, self.preview, self.token, self.registry = daemon, preview, token, registry

    def get(self, path: str, request: Request) -> Reply | None:
        d = self.daemon
        if path == "/healthz":
            ok, why = d.healthy()
            return Reply.json(200 if ok else 503, {"ok": ok, "reason": why})
        if path == "/status":
            return Reply(200, (json.dumps(d.status(), indent=2) + "\n").encode(), "application/json")
        if path == "/metrics":
            return Reply(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path == "/preview.mjpg" and self.preview:
            return Reply(200, ctype="multipart/x-mixed-replace; boundary=frame", stream=self._mjpeg())
        return None

    def _mjpeg(self):  # noqa: ANN202 - a generator of MJPEG parts
        d = self.daemon
        d.preview_clients += 1
        try:
            yield from every(0.1, lambda: d.stopping, iter(lambda: d.latest_preview, object()))
        finally:
            d.preview_clients -= 1

    def post(self, path: str, body: dict[str, Any], request: Request) -> Reply | None:
        """``POST /bundle`` ``{"bundle": PATH}``: classify with another bundle from the next frame;
        ``POST /detector`` ``{"centres": MODEL}``: find cells with another centre detector from the next
        frame (``"builtin"``, a model from ``alnett-edge detector train``, ``""``: rule-based). Each
        changes the daemon, so it needs a configured token (sent as ``Authorization: Bearer`` or the
        page's login cookie) and a JSON body (:mod:`alnett_edge.daemon.web`)."""
        if path not in ("/bundle", "/detector"):
            return None
        if not self.token:
            return Reply.json(403, {"error": "changes need [http] token set in the daemon's config"})
        if path == "/detector":
            return self._detector(body)
        bundle = body.get("bundle")
        if not isinstance(bundle, str) or not bundle:
            return Reply.json(400, {"error": "the body must be JSON {\"bundle\": \"/path/to/bundle\"}"})
        try:
            sha = self.daemon.request_swap(bundle)
        except AlnettError as exc:
            log.error("bundle %s refused: %s", bundle, exc)
            return Reply.json(409, {"error": str(exc)})
        return Reply.json(202, {"accepted": bundle, "model_sha256": sha, "from": "the next frame"})

    def _detector(self, body: dict[str, Any]) -> Reply:
        centres = body.get("centres")
        if not isinstance(centres, str):
            return Reply.json(400, {"error": "the body must be JSON {\"centres\": \"builtin\" | \"/path/model.onnx\" | "
                                             "\"\"} (\"\": the rule-based detector)"})
        try:
            info = self.daemon.request_detector(centres)
        except AlnettError as exc:
            log.error("centre detector %s refused: %s", centres, exc)
            return Reply.json(409, {"error": str(exc)})
        return Reply.json(202, {"accepted": info, "from": "the next frame"})


class HttpServer:
    """The daemon's HTTP front: its API (:class:`DaemonRoutes`), the device page
    (:class:`alnett_edge.daemon.page.PageRoutes`) and, with ``[http] label_dataset``, the label view."""

    def __init__(self, daemon: Daemon, host: str, port: int, token: str = "", preview: bool = False,
                 read_only: bool = False, label_dataset: str = "", labeller: str = "device") -> None:
        from alnett_edge.daemon.page import PageRoutes

        check_bind(host, token, "the daemon")
        registry = CollectorRegistry()
        registry.register(DaemonCollector(daemon))
        routes: list[Any] = [DaemonRoutes(daemon, preview, token, registry), PageRoutes(daemon)]
        if label_dataset:
            from alnett_edge.daemon.labelpage import LabelRoutes
            from alnett_edge.vision.harvest import init_dataset
            from alnett_edge.vision.labels import LabelBook

            init_dataset(Path(label_dataset), float(daemon.card.input.canvas_um), daemon.card.class_set)
            routes.append(LabelRoutes(LabelBook(label_dataset, labeller, "uncertain"), home="/"))
        self.server = bind_server(host, port, make_web_handler(routes, host, token, read_only), health=getattr(daemon, "healthy", None))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Idempotent; safe before :meth:`start` (``shutdown`` would wait forever for a loop never run)."""
        if self.thread.is_alive():
            self.server.shutdown()
        if self.server.socket.fileno() != -1:
            self.server.server_close()
