"""The one HTTP front of the device: the daemon's API and page, and ``alnett-edge label``, served by the
standard library's threading server (no framework to install on a Pi; the pages are Jinja2 templates
and a small hand-written script, every asset served by the package).

Routes are objects with ``get(path, request)`` and ``post(path, body, request)`` returning a
:class:`Reply` or None (not theirs); :func:`make_web_handler` asks each in turn. What every route
gets, once, here:

* **Host check.** The Host header must name the address served (any of localhost's names on a local
  bind): a DNS-rebinding page, whose Host is its own name, gets 421.
* **Token.** With a token set (required beyond localhost), a request needs ``Authorization: Bearer
  TOKEN`` or the session cookie that ``POST /login`` gives for the token (HttpOnly, SameSite=Strict).
  The token is never taken from a URL and never logged. Without it the page shows a login form.
* **Changes** are POSTs with a JSON body of at most :data:`MAX_BODY` bytes (a cross-site form cannot
  send one without the browser asking first), refused with an ``Origin`` of another site, and refused
  in a read-only server (a screen in the corridor).
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from alnett_edge.daemon.config import LOCAL_HOSTS
from alnett_edge.errors import ConfigError

log = logging.getLogger(__name__)

#: connections served at once (each holds a thread); more are answered 503 and closed at once
MAX_CONNECTIONS = 32
#: seconds a connection may stay silent (a request not sent, a client not reading) before it is closed
IO_TIMEOUT_S = 10.0
#: the largest request body taken (JSON: a path, a label, a session name)
MAX_BODY = 4096
COOKIE = "alnett_session"
#: a login cookie lasts this long (seconds); sessions are kept in memory, so a restart logs everyone out
SESSION_TTL_S = 12 * 3600
#: how long the accept loop waits for a busy connection's first bytes (is it a liveness probe?)
HEALTH_PEEK_S = 0.1
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nbusy\n"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
}


@dataclass
class Reply:
    code: int
    body: bytes = b""
    ctype: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None  # written chunk by chunk until the client leaves (MJPEG)

    @classmethod
    def json(cls, code: int, data: Any, **headers: str) -> Reply:
        return cls(code, (json.dumps(data) + "\n").encode(), "application/json", dict(headers))

    @classmethod
    def text(cls, code: int, text: str) -> Reply:
        return cls(code, (text.rstrip("\n") + "\n").encode())

    @classmethod
    def html(cls, text: str, code: int = 200) -> Reply:
        return cls(code, text.encode(), "text/html; charset=utf-8")


@dataclass
class Request:
    """What a route may read of a request."""

    query: dict[str, list[str]]
    headers: Any
    authorised: bool  # a token is set and this request carries it (or no token is set)
    read_only: bool

    def arg(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]


class Routes(Protocol):
    def get(self, path: str, request: Request) -> Reply | None: ...

    def post(self, path: str, body: dict[str, Any], request: Request) -> Reply | None: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR: a restart may bind while the previous run's socket is in TIME_WAIT (Linux still
    # refuses a port another process is listening on, so a second daemon gets EADDRINUSE as before)
    allow_reuse_address = True

    def __init__(self, *args: Any, health: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.health = health  # () -> (ok, reason): /healthz is answered even when every slot is held

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # bounded: idle clients cannot pile up threads
            try:
                request.settimeout(HEALTH_PEEK_S)
                reply = _BUSY
                if self.health is not None:  # a liveness probe must not restart a daemon that is only busy
                    head = request.recv(32, socket.MSG_PEEK)
                    if head.startswith((b"GET /healthz ", b"GET /healthz?")):
                        ok, why = self.health()
                        body = json.dumps({"ok": ok, "reason": f"{why}; HTTP busy ({MAX_CONNECTIONS} connections)"})
                        reply = (f"HTTP/1.0 {200 if ok else 503} {'OK' if ok else 'Service Unavailable'}\r\n"
                                 f"Content-Type: application/json\r\nContent-Length: {len(body) + 1}\r\n\r\n"
                                 f"{body}\n").encode()
                request.settimeout(1.0)
                request.sendall(reply)
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
        # a client that went away mid-answer is not the server's error: one debug line, no traceback
        log.debug("http: %s: %s", client_address[0] if client_address else "?", sys.exc_info()[1])


def bind_server(host: str, port: int, handler: type[BaseHTTPRequestHandler], health: Any = None) -> ThreadingHTTPServer:
    """A bounded threading server on ``host:port`` (not yet serving); a port in use is one line."""
    try:
        return _Server((host, port), handler, health=health)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use (another daemon?); pick another with --port") from exc
        raise ConfigError(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}") from exc


def host_allowed(host_header: str | None, bound: str) -> bool:
    """The request's Host names the address served (any of localhost's names for a local bind; anything
    for 0.0.0.0, which needs a token): a DNS-rebinding page, whose Host is its own name, is refused."""
    try:
        name = urlparse("//" + (host_header or "").strip()).hostname
    except ValueError:
        return False
    if not name:
        return False
    if bound in ("0.0.0.0", "::"):
        return True
    return name in (LOCAL_HOSTS if bound in LOCAL_HOSTS else (bound.lower(),))


def check_bind(host: str, token: str, what: str) -> None:
    if host not in LOCAL_HOSTS and not token:
        raise ConfigError(f"serving {what} on {host} lets anyone on the network in: set a token")


class Sessions:
    """Login cookies: random ids kept in memory (never the token), each valid for SESSION_TTL_S."""

    def __init__(self) -> None:
        self._ids: dict[str, float] = {}
        self._lock = threading.Lock()

    def new(self) -> str:
        sid = secrets.token_urlsafe(24)
        with self._lock:
            now = time.time()
            self._ids = {k: t for k, t in self._ids.items() if t > now}
            self._ids[sid] = now + SESSION_TTL_S
        return sid

    def valid(self, sid: str) -> bool:
        with self._lock:
            return bool(sid) and self._ids.get(sid, 0.0) > time.time()


def _cookie(headers: Any) -> str:
    for part in (headers.get("Cookie") or "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == COOKIE:
            return v
    return ""


def make_web_handler(routes: list[Routes], bound: str, token: str, read_only: bool = False,
                     title: str = "alnett-edge") -> type[BaseHTTPRequestHandler]:
    """The request handler for ``routes``, with the checks of the module doc."""
    sessions = Sessions()

    def is_token(given: str) -> bool:
        return bool(token) and hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))

    class Handler(BaseHTTPRequestHandler):
        timeout = IO_TIMEOUT_S  # socket timeout for every read and write of this connection

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http: " + fmt, *(re.sub(r"\?\S*", "?…", a) if isinstance(a, str) else a for a in args))

        def _authorised(self) -> bool:
            if not token:
                return True
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer ") and is_token(auth[7:].strip()):
                return True
            return sessions.valid(_cookie(self.headers))

        def _reply(self, r: Reply) -> None:
            self.send_response(r.code)
            self.send_header("Content-Type", r.ctype)
            for k, v in {**SECURITY_HEADERS, "Cache-Control": "no-store", **r.headers}.items():
                self.send_header(k, v)
            if r.stream is None:
                self.send_header("Content-Length", str(len(r.body)))
                self.end_headers()
                self.wfile.write(r.body)
                return
            self.end_headers()
            try:
                for chunk in r.stream:
                    self.wfile.write(chunk)
            except OSError:  # the viewer went away (broken pipe, reset, timeout)
                pass
            finally:
                close = getattr(r.stream, "close", None)
                if close:
                    close()

        def _request(self, query: str) -> Request | Reply:
            if not host_allowed(self.headers.get("Host"), bound):
                return Reply.text(421, "wrong Host header")
            return Request(parse_qs(query), self.headers, self._authorised(), read_only)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            url = urlparse(self.path)
            req = self._request(url.query)
            if isinstance(req, Reply):
                return self._reply(req)
            if url.path == "/favicon.ico":
                return self._reply(Reply(204, ctype="image/x-icon"))
            if not req.authorised:
                if url.path in ("/", "/label"):  # a person at a browser: the login form
                    return self._reply(Reply.html(LOGIN_PAGE.replace("{title}", title), 401))
                return self._reply(Reply.text(401, "token required (Authorization: Bearer TOKEN)"))
            for r in routes:
                reply = r.get(url.path, req)
                if reply is not None:
                    return self._reply(reply)
            self._reply(Reply.text(404, "not found"))

        def _body(self) -> dict[str, Any] | Reply:
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                return Reply.json(415, {"error": "send a JSON body (Content-Type: application/json)"})
            try:
                length = int(self.headers.get("Content-Length", "-1"))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                return Reply.json(413 if length > MAX_BODY else 411, {"error": f"a body of 0 to {MAX_BODY} bytes is needed"})
            try:
                body = json.loads(self.rfile.read(length).decode("utf-8") or "{}")
            except (ValueError, UnicodeDecodeError):
                return Reply.json(400, {"error": "the body must be a JSON object"})
            return body if isinstance(body, dict) else Reply.json(400, {"error": "the body must be a JSON object"})

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            url = urlparse(self.path)
            req = self._request(url.query)
            if isinstance(req, Reply):
                return self._reply(req)
            origin = self.headers.get("Origin")  # browsers send it with every POST: it must be this page's own
            if origin is not None and urlparse(origin).netloc.lower() != (self.headers.get("Host") or "").lower():
                return self._reply(Reply.json(403, {"error": "a request from another site"}))
            if url.path != "/login" and not req.authorised:
                return self._reply(Reply.json(401, {"error": "token required (Authorization: Bearer TOKEN)"}))
            if url.path != "/login" and read_only:
                return self._reply(Reply.json(403, {"error": "this server is read-only ([http] read_only)"}))
            body = self._body()
            if isinstance(body, Reply):
                return self._reply(body)
            if url.path == "/login":
                given = body.get("token")
                if not token:
                    return self._reply(Reply.json(200, {"ok": True, "note": "no token is set"}))
                if not isinstance(given, str) or not is_token(given):
                    log.warning("http: a wrong token from %s", self.client_address[0])
                    return self._reply(Reply.json(401, {"error": "wrong token"}))
                return self._reply(Reply.json(200, {"ok": True}, **{
                    "Set-Cookie": f"{COOKIE}={sessions.new()}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_TTL_S}"}))
            for r in routes:
                reply = r.post(url.path, body, req)
                if reply is not None:
                    return self._reply(reply)
            self._reply(Reply.text(404, "not found"))

    return Handler


def serve(routes: list[Routes], host: str, port: int, token: str = "", read_only: bool = False,
          title: str = "alnett-edge") -> ThreadingHTTPServer:
    """A started server (its ``server_address[1]`` is the port; ``shutdown()`` and ``server_close()`` stop it)."""
    server = bind_server(host, port, make_web_handler(routes, host, token, read_only, title))
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def every(interval_s: float, stop: Any, frames: Iterator[bytes | None]) -> Iterator[bytes]:
    """MJPEG parts of ``frames`` (the latest JPEG each time, None: nothing yet) every ``interval_s``
    until ``stop()``."""
    for jpg in frames:
        if stop():
            return
        if jpg:
            yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpg)).encode() + b"\r\n\r\n"
                   + jpg + b"\r\n")
        time.sleep(interval_s)


LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}: sign in</title>
<style>body{font:15px system-ui,sans-serif;background:#14171c;color:#e8ebef;display:grid;place-items:center;
height:100vh;margin:0}form{background:#1d2128;padding:24px;border-radius:8px}input,button{font:inherit;
padding:8px;margin-top:8px}#m{color:#ffd600;min-height:1.4em}</style></head><body>
<form id="f"><b>{title}</b><p>This device needs its token.</p>
<input id="t" type="password" autocomplete="current-password" placeholder="token" autofocus>
<button>Sign in</button><div id="m" role="status"></div></form>
<script>
document.getElementById("f").onsubmit = async e => {
  e.preventDefault();
  const r = await fetch("/login", {method: "POST", headers: {"Content-Type": "application/json"},
                                   body: JSON.stringify({token: document.getElementById("t").value})});
  if (r.ok) location.reload(); else document.getElementById("m").textContent = "wrong token";
};
</script></body></html>
"""
