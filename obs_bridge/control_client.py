"""Client of the app's local control API, stdlib only: the OBS script imports it inside OBS's own Python.

The running app writes ``control.json`` (0600) into the config folder with the API's URL and a random token;
clients read it, so nothing has to be typed. Protocol (JSON over HTTP on 127.0.0.1, header ``X-SDV2-Token``):

    GET  /v1/status                  -> the session status
    GET  /v1/presets                 -> {"presets": [...], "current": name | null}
    POST /v1/preset  {"name": N}     -> {"controls": {...}}
    POST /v1/steps   {"steps": 1-4}  -> {"controls": {...}}
    POST /v1/prompt  {"prompt": TEXT} or {"prompts": [[TEXT, WEIGHT], ...]} (a weighted blend) -> {"controls": {...}}
    POST /v1/start | /v1/stop        -> {"state": ...}

Errors come back as ``{"error": "one line naming the fix"}`` with status 400 (bad request), 401 (token),
404 (unknown path) or 500.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from sdv2_studio.obs_bridge.paths import config_dir

TOKEN_HEADER = "X-SDV2-Token"
API_PREFIX = "/v1"


class ControlError(Exception):
    """The control API is unreachable or refused a request (one readable line)."""


def control_file() -> Path:
    """Where the running app publishes its control API (``$SDV2_CONTROL_FILE`` overrides)."""
    override = os.environ.get("SDV2_CONTROL_FILE")
    return Path(override).expanduser() if override else config_dir() / "control.json"


def read_control_file(path: Path | None = None) -> tuple[str, str]:
    """``(url, token)`` the running app published; ControlError if the app does not run."""
    path = path or control_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return str(data["url"]), str(data["token"])
    except FileNotFoundError:
        raise ControlError("the StreamDiffusionV2 app is not running (start it, e.g. `sdv2 obs attach --scene "
                           "SCENE`)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ControlError(f"cannot read {path} ({type(e).__name__}); restart the app") from None


STOP_TIMEOUT = 30.0  # seconds a stop may take (Session.stop's own bounds: 2 s + 10 s joins, 10 s engine stop)


class ControlClient:
    """Calls the control API at ``url`` with ``token``; every failure is a :class:`ControlError`."""

    def __init__(self, url: str, token: str, timeout: float = 2.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self._token = token
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy

    @classmethod
    def from_file(cls, path: Path | None = None, timeout: float = 2.0) -> ControlClient:
        url, token = read_control_file(path)
        return cls(url, token, timeout)

    def request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{API_PREFIX}{path}", data=data, method=method)
        req.add_header(TOKEN_HEADER, self._token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error") or e.reason
            except ValueError:
                message = e.reason
            raise ControlError(str(message)) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise ControlError(f"the app's control API at {self.url} does not answer ({reason}); is the app "
                               "still running?") from None

    def status(self) -> dict:
        return self.request("GET", "/status")

    def presets(self) -> dict:
        return self.request("GET", "/presets")

    def apply_preset(self, name: str) -> dict:
        return self.request("POST", "/preset", {"name": name})

    def set_steps(self, steps: int) -> dict:
        return self.request("POST", "/steps", {"steps": int(steps)})

    def set_prompts(self, pairs) -> dict:
        """A prompt or a weighted blend: ((prompt, weight), ...), the first the main prompt."""
        return self.request("POST", "/prompt", {"prompts": [[p, w] for p, w in pairs]})

    def start(self) -> dict:
        return self.request("POST", "/start", {})

    def stop(self) -> dict:
        """Returns when the stream has stopped: the chunks in flight finish and the outputs close first, which on a
        busy CPU takes seconds, so this waits up to STOP_TIMEOUT."""
        return self.request("POST", "/stop", {}, timeout=max(self.timeout, STOP_TIMEOUT))
