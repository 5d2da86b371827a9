"""The app's local control API server: JSON over HTTP on 127.0.0.1, token-protected (protocol in control_client).

    server = ControlServer(session).start()   # binds 127.0.0.1:<free port>, publishes control.json (0600)
    ...
    server.stop()                             # removes control.json (if it is still ours)

The target is any object with ``status()``, ``preset_names()``, ``apply_preset(name)``, ``set_steps(n)``,
``set_prompts(pairs)`` (a prompt or a weighted blend: ((prompt, weight), ...)), ``start(wait=False)`` and ``stop()``
(a :class:`~obs_bridge.session.StreamSession`, such as the OBS bridge). Requests need the token in the
``X-SDV2-Token`` header (compared in constant time); browsers cannot send that header cross-origin without a CORS
preflight, which this server never approves, and requests whose ``Host`` is not a loopback name are refused (DNS
rebinding). Built on the standard library's ``http.server`` in one daemon thread per connection; no Qt, no framework.

Hostile or broken clients cost little and block nobody: a body needs an exact ``Content-Length`` of at most 64 KiB
(a negative, non-numeric, repeated or oversized one, or chunked transfer, is answered 400/411/413 with one line and
the connection closed; nothing beyond the stated length is read); a connection that sends nothing for
``IDLE_SECONDS``, or does not finish a request within ``REQUEST_SECONDS``, is dropped; at most ``MAX_CONNECTIONS``
are served at once (more get a 503 at once).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import os
import secrets
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol, TypeVar

from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.obs_bridge.control_client import API_PREFIX, TOKEN_HEADER, control_file
from sdv2_studio.obs_bridge.paths import write_private

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
IDLE_SECONDS = 5.0  # a connection silent this long (before or between requests, or mid-request) is dropped
REQUEST_SECONDS = 10.0  # a request (line, headers and body) must arrive within this time, however slowly it drips
MAX_CONNECTIONS = 16
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}


class ControlTarget(Protocol):
    def status(self) -> dict: ...

    def preset_names(self) -> list[str]: ...

    def apply_preset(self, name: str) -> Controls: ...

    def set_steps(self, steps: int) -> Controls: ...

    def set_prompts(self, pairs: list[tuple[str, float]]) -> Controls: ...

    def start(self, wait: bool = True) -> None: ...

    def stop(self) -> None: ...


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "sdv2-control/1"

    def setup(self) -> None:
        self.timeout = self.server.idle_seconds  # every read and write on the socket (StreamRequestHandler's)
        super().setup()

    def handle_one_request(self) -> None:
        """One request, with a deadline for receiving it: a client that drips bytes cannot hold the connection."""
        self._deadline = threading.Timer(self.server.request_seconds, self._drop)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        except OSError:  # dropped (deadline, idle) or the client went away
            self.close_connection = True
        finally:
            self._deadline.cancel()

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # the blocked read returns; the handler ends
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:  # no access log on stderr
        log.debug("control API: " + format, *args)

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a garbled request line, a line or header set too long): one JSON line too,
        with a status line even for what parsed as HTTP/0.9, and the connection closed."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.1"
        self._reply(code, {"error": " ".join((message or HTTPStatus(code).phrase).split())})

    def _check(self) -> None:
        host = self.headers.get("Host") or ""
        name = host[: host.find("]") + 1] if host.startswith("[") else host.split(":", 1)[0]
        if name not in LOOPBACK_HOSTS:
            raise _ApiError(403, "the control API only answers requests addressed to 127.0.0.1")
        token = self.headers.get(TOKEN_HEADER) or ""
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            raise _ApiError(401, f"missing or wrong {TOKEN_HEADER}: read the token from the app's control file")

    def _body(self) -> dict:
        if self.headers.get("Transfer-Encoding"):
            raise _ApiError(411, "chunked bodies are not accepted: send the body with a Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        text = lengths[0].strip() if lengths else "0"
        if len(lengths) > 1 or not (text.isascii() and text.isdigit()):
            raise _ApiError(400, "bad Content-Length: send one header with the body's size in bytes")
        length = int(text)
        if length > MAX_BODY:
            raise _ApiError(413, f"request body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            raise _ApiError(400, f"the request body ended after {len(raw)} of {length} bytes")
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            raise _ApiError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise _ApiError(400, "the request body must be a JSON object")
        return data

    def _dispatch(self, method: str) -> None:
        try:
            self._check()
            body = self._body() if method == "POST" else {}
            self._deadline.cancel()  # the request is in; handling it may take as long as it needs
            path = self.path.split("?", 1)[0]
            if not path.startswith(API_PREFIX + "/"):
                raise _ApiError(404, f"unknown endpoint {path}")
            route = (method, path[len(API_PREFIX):])
            handler = ROUTES.get(route)
            if handler is None:
                known = {p for _, p in ROUTES}
                status = 405 if route[1] in known else 404
                raise _ApiError(status, f"unknown endpoint {method} {path}")
            self._reply(200, handler(self.server.target, body))
        except _ApiError as e:
            self.close_connection = True  # a body we did not read must not be taken for the next request
            self._reply(e.status, {"error": str(e)})
        except EngineError as e:
            self._reply(400, {"error": str(e)})
        except Exception as e:  # a bug: answer instead of dropping the connection
            log.exception("control API request failed")
            self._reply(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    def do_GET(self) -> None:  # http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


T = TypeVar("T")


def _require(body: dict, key: str, kind: type[T]) -> T:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _ApiError(400, f"the request needs {key!r} ({kind.__name__})")
    return value


def _presets(target: ControlTarget, body: dict) -> dict:
    status = target.status()
    return {"presets": target.preset_names(), "current": status.get("preset")}


def _apply_preset(target: ControlTarget, body: dict) -> dict:
    return {"controls": dataclasses.asdict(target.apply_preset(_require(body, "name", str)))}


def _set_steps(target: ControlTarget, body: dict) -> dict:
    return {"controls": dataclasses.asdict(target.set_steps(_require(body, "steps", int)))}


def _set_prompts(target: ControlTarget, body: dict) -> dict:
    """{"prompt": TEXT} or {"prompts": [[TEXT, WEIGHT], ...]} (a weighted blend, Controls checks the values)."""
    if "prompts" not in body:
        return {"controls": dataclasses.asdict(target.set_prompts([(_require(body, "prompt", str), 1.0)]))}
    pairs = body["prompts"]
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise _ApiError(400, "'prompts' must be a list of [prompt, weight] pairs")
    return {"controls": dataclasses.asdict(target.set_prompts([tuple(p) for p in pairs]))}


def _start(target: ControlTarget, body: dict) -> dict:
    target.start(wait=False)
    return {"state": target.status().get("state")}


def _stop(target: ControlTarget, body: dict) -> dict:
    target.stop()
    return {"state": target.status().get("state")}


ROUTES = {
    ("GET", "/status"): lambda target, body: target.status(),
    ("GET", "/presets"): _presets,
    ("POST", "/preset"): _apply_preset,
    ("POST", "/steps"): _set_steps,
    ("POST", "/prompt"): _set_prompts,
    ("POST", "/start"): _start,
    ("POST", "/stop"): _stop,
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], target: ControlTarget, token: str, *, idle_seconds: float,
                 request_seconds: float, max_connections: int) -> None:
        super().__init__(address, _Handler)
        self.target, self.token = target, token
        self.idle_seconds, self.request_seconds = idle_seconds, request_seconds
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):  # full: answer at once instead of queueing behind the others
            try:
                request.settimeout(1.0)
                body = b'{"error": "too many connections to the control API; retry in a moment"}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class ControlServer:
    """Serves ``target`` on ``host:port`` (port 0: a free one) with ``token`` (default: 32 random bytes).

    ``publish`` (default on) writes ``{"url", "token", "pid"}`` to ``control_path`` (default: the control
    file every client reads) for the lifetime of the server. ``idle_seconds``, ``request_seconds`` and
    ``max_connections`` bound what one client can hold (see the module docstring)."""

    def __init__(self, target: ControlTarget, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 publish: bool = True, control_path: Path | None = None, idle_seconds: float = IDLE_SECONDS,
                 request_seconds: float = REQUEST_SECONDS, max_connections: int = MAX_CONNECTIONS) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise EngineError(f"the control API only binds to the loopback interface 127.0.0.1, not {host}")
        self.target = target
        self.token = token or secrets.token_urlsafe(32)
        self.publish = publish
        self.control_path = control_path or control_file()
        try:
            self._server = _Server((host, port), target, self.token, idle_seconds=idle_seconds,
                                   request_seconds=request_seconds, max_connections=max_connections)
        except OSError as e:
            raise EngineError(f"cannot open the control API on {host}:{port} ({e.strerror}); pick another "
                              "--control-port") from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ControlServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                            name="sdv2-control", daemon=True)
            self._thread.start()
            if self.publish:
                write_private(self.control_path, json.dumps({"url": self.url, "token": self.token,
                                                             "pid": os.getpid()}) + "\n")
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        if self.publish:
            self._unpublish()

    def _unpublish(self) -> None:
        try:
            data = json.loads(self.control_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(data, dict) and data.get("token") == self.token:  # another app instance may own it now
            self.control_path.unlink(missing_ok=True)

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
