"""The daemon's HTTP endpoints: ``/healthz``, ``/status`` (JSON), ``/metrics`` (Prometheus, via
prometheus-client) and, when enabled, ``/preview.mjpg`` (annotated frames). Localhost by default; any
other address needs a token, sent as ``Authorization: Bearer TOKEN`` or ``?token=TOKEN``."""

from __future__ import annotations

import errno
import hmac
import json
import logging
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from alnett_edge.errors import AlnettError, ConfigError

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


#: connections served at once (each holds a thread); more are answered 503 and closed at once
MAX_CONNECTIONS = 16
#: seconds a connection may stay silent (a request not sent, a client not reading) before it is closed
IO_TIMEOUT_S = 10.0
#: the largest request body taken (POST /bundle: a path in JSON)
MAX_BODY = 4096
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nbusy\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR: a restart may bind while the previous run's socket is in TIME_WAIT (Linux still
    # refuses a port another process is listening on, so a second daemon gets EADDRINUSE as before)
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # bounded: idle clients cannot pile up threads
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that went away mid-answer is not the daemon's error: one debug line, no traceback
        exc = sys.exc_info()[1]
        log.debug("http: %s: %s", client_address[0] if client_address else "?", exc)


def make_handler(daemon: Daemon, token: str, preview: bool, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    def is_token(given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))  # any text, no TypeError

    class Handler(BaseHTTPRequestHandler):
        timeout = IO_TIMEOUT_S  # socket timeout for every read and write of this connection

        def log_message(self, fmt: str, *args: Any) -> None:
            # the request line may carry ?token=...: never log query strings
            log.debug("http: " + fmt, *(re.sub(r"\?\S*", "?…", a) if isinstance(a, str) else a for a in args))

        def _authorised(self, query: dict[str, list[str]]) -> bool:
            if not token:
                return True
            given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip() or query.get("token", [""])[0]
            return is_token(given)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            url = urlparse(self.path)
            if not self._authorised(parse_qs(url.query)):
                return self._send(401, b"token required\n", "text/plain")
            if url.path == "/healthz":
                ok, why = daemon.healthy()
                return self._send(200 if ok else 503, (json.dumps({"ok": ok, "reason": why}) + "\n").encode(), "application/json")
            if url.path == "/status":
                return self._send(200, (json.dumps(daemon.status(), indent=2) + "\n").encode(), "application/json")
            if url.path == "/metrics":
                return self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            if url.path == "/preview.mjpg" and preview:
                return self._mjpeg()
            return self._send(404, b"not found\n", "text/plain")

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            """``POST /bundle`` ``{"bundle": PATH}``: classify with another bundle from the next frame. It
            changes the daemon, so it needs a configured token, sent as ``Authorization: Bearer`` (never
            in the URL), and a JSON body (a cross-site form cannot send one without the browser asking
            first)."""
            url = urlparse(self.path)
            if url.path != "/bundle":
                return self._send(404, b"not found\n", "text/plain")
            if not token:
                return self._json(403, {"error": "changes need [http] token set in the daemon's config"})
            given = self.headers.get("Authorization", "")
            if not given.startswith("Bearer ") or not is_token(given[7:].strip()):
                return self._json(401, {"error": "token required (Authorization: Bearer TOKEN)"})
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                return self._json(415, {"error": "send a JSON body: {\"bundle\": \"/path/to/bundle\"}"})
            try:
                length = int(self.headers.get("Content-Length", "-1"))
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                return self._json(413 if length > MAX_BODY else 411, {"error": f"a body of 1 to {MAX_BODY} bytes is needed"})
            try:
                body = json.loads(self.rfile.read(length).decode("utf-8"))
                bundle = body["bundle"]
                if not isinstance(bundle, str) or not bundle:
                    raise TypeError
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                return self._json(400, {"error": "the body must be JSON {\"bundle\": \"/path/to/bundle\"}"})
            try:
                sha = daemon.request_swap(bundle)
            except AlnettError as exc:
                log.error("bundle %s refused: %s", bundle, exc)
                return self._json(409, {"error": str(exc)})
            return self._json(202, {"accepted": bundle, "model_sha256": sha, "from": "the next frame"})

        def _json(self, code: int, data: dict[str, Any]) -> None:
            self._send(code, (json.dumps(data) + "\n").encode(), "application/json")

        def _mjpeg(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            daemon.preview_clients += 1
            try:
                while not daemon.stopping:
                    jpg = daemon.latest_preview
                    if jpg:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " +
                                         str(len(jpg)).encode() + b"\r\n\r\n" + jpg + b"\r\n")
                    time.sleep(0.1)
            except OSError:  # the viewer went away (broken pipe, reset, timeout)
                pass
            finally:
                daemon.preview_clients -= 1

    return Handler


class HttpServer:
    def __init__(self, daemon: Daemon, host: str, port: int, token: str = "", preview: bool = False) -> None:
        registry = CollectorRegistry()
        registry.register(DaemonCollector(daemon))
        try:
            self.server = _Server((host, port), make_handler(daemon, token, preview, registry))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use (another daemon?); pick another with --port") from exc
            raise ConfigError(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}") from exc
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
