"""The app's local control API server: JSON over HTTP on 127.0.0.1, token-protected (protocol in control_client).

    server = ControlServer(session).start()   # binds 127.0.0.1:<free port>, publishes control.json (0600)
    ...
    server.stop()                             # removes control.json (if it is still ours)

The target is any object with ``status()``, ``preset_names()``, ``apply_preset(name)``, ``set_steps(n)``,
``set_prompts(pairs)`` (a prompt or a weighted blend: ((prompt, weight), ...)), ``start(wait=False)`` and ``stop()``
(a :class:`~obs_bridge.session.StreamSession` or the OBS bridge around one). Requests need the token in the
``X-SDV2-Token`` header (compared in constant time); browsers cannot send that header cross-origin without a CORS
preflight, which this server never approves, and requests whose ``Host`` is not a loopback name are refused (DNS
rebinding). Bodies are limited to 64 KiB. Built on the standard library's ``http.server`` in one daemon thread per
request; no Qt, no framework.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol, TypeVar

from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.obs_bridge.control_client import API_PREFIX, TOKEN_HEADER, control_file
from sdv2_studio.obs_bridge.paths import write_private

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
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

    def _check(self) -> None:
        host = self.headers.get("Host") or ""
        name = host[: host.find("]") + 1] if host.startswith("[") else host.split(":", 1)[0]
        if name not in LOOPBACK_HOSTS:
            raise _ApiError(403, "the control API only answers requests addressed to 127.0.0.1")
        token = self.headers.get(TOKEN_HEADER) or ""
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            raise _ApiError(401, f"missing or wrong {TOKEN_HEADER}: read the token from the app's control file")

    def _body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _ApiError(400, "bad Content-Length") from None
        if length > MAX_BODY:
            raise _ApiError(413, f"request body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
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

    def __init__(self, address: tuple[str, int], target: ControlTarget, token: str) -> None:
        super().__init__(address, _Handler)
        self.target, self.token = target, token


class ControlServer:
    """Serves ``target`` on ``host:port`` (port 0: a free one) with ``token`` (default: 32 random bytes).

    ``publish`` (default on) writes ``{"url", "token", "pid"}`` to ``control_path`` (default: the control
    file every client reads) for the lifetime of the server."""

    def __init__(self, target: ControlTarget, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 publish: bool = True, control_path: Path | None = None) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise EngineError(f"the control API only binds to the loopback interface 127.0.0.1, not {host}")
        self.target = target
        self.token = token or secrets.token_urlsafe(32)
        self.publish = publish
        self.control_path = control_path or control_file()
        try:
            self._server = _Server((host, port), target, self.token)
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
