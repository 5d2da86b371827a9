"""Connection settings for obs-websocket: host, port and password, with the password kept out of files and logs.

Where each value comes from, first match wins:

* host/port: ``$SDV2_OBS_HOST`` / ``$SDV2_OBS_PORT``, else ``obs.json`` in :func:`~obs_bridge.paths.config_dir`,
  else ``127.0.0.1:4455`` (obs-websocket's default port; it listens on all interfaces, so keep auth on).
* password: ``$SDV2_OBS_PASSWORD``, else the OS keyring (service ``streamdiffusion-studio-obs``, user
  ``host:port``; needs the optional ``keyring`` package and a working backend), else ``obs.json`` (written
  0600 only when no keyring works), else none.

The password never appears in ``repr``, logs or error messages. ``keyring`` is optional: missing, without a
backend (headless Linux) or failing, it is skipped and the file fallback is used.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.obs_bridge.paths import config_dir, write_private

log = logging.getLogger(__name__)

KEYRING_SERVICE = "streamdiffusion-studio-obs"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4455


@dataclass
class ObsSettings:
    """How to reach obs-websocket. ``timeout`` bounds connecting and each request (seconds)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    password: str = field(default="", repr=False)
    timeout: float = 5.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def settings_path() -> Path:
    """The settings file (``obs.json`` in the config folder)."""
    return config_dir() / "obs.json"


def _read_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read OBS settings {path} ({e}); fix or delete the file") from None
    if not isinstance(data, dict):
        raise EngineError(f"OBS settings {path} must hold a JSON object; fix or delete the file")
    return data


def _port(value: object, where: str) -> int:
    try:
        port = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise EngineError(f"OBS port {value!r} from {where} is not a number; use e.g. 4455") from None
    if not 0 < port < 65536:
        raise EngineError(f"OBS port {port} from {where} is out of range; use e.g. 4455")
    return port


def _keyring():
    """The ``keyring`` module, or None when it is not installed."""
    try:
        import keyring
    except ImportError:
        return None
    return keyring


def keyring_get(host: str, port: int) -> str | None:
    """The stored password for ``host:port``, or None (no keyring, no backend, nothing stored, or an error)."""
    kr = _keyring()
    if kr is None:
        return None
    try:
        return kr.get_password(KEYRING_SERVICE, f"{host}:{port}")
    except Exception as e:  # NoKeyringError, locked keyring, D-Bus trouble: fall back quietly
        log.debug("keyring unavailable: %s", type(e).__name__)
        return None


def keyring_set(host: str, port: int, password: str) -> bool:
    """Store the password in the OS keyring; False when no keyring works."""
    kr = _keyring()
    if kr is None:
        return False
    try:
        kr.set_password(KEYRING_SERVICE, f"{host}:{port}", password)
    except Exception as e:  # no backend / backend failure: the caller falls back to the file
        log.debug("keyring unavailable: %s", type(e).__name__)
        return False
    return True


def load_settings(path: Path | None = None, *, env: dict[str, str] | None = None,
                  use_keyring: bool = True) -> ObsSettings:
    """Read the settings (see module docstring for the order); raises EngineError on a broken file or port."""
    env = os.environ if env is None else env
    path = path or settings_path()
    data = _read_file(path)
    host = env.get("SDV2_OBS_HOST") or data.get("host") or DEFAULT_HOST
    if not isinstance(host, str) or not host.strip() or not host.isprintable():
        raise EngineError(f"OBS host {host!r} must be a host name or address like 127.0.0.1; fix {path} or "
                          "$SDV2_OBS_HOST")
    if env.get("SDV2_OBS_PORT"):
        port = _port(env["SDV2_OBS_PORT"], "$SDV2_OBS_PORT")
    else:
        port = _port(data.get("port", DEFAULT_PORT), str(path))
    password = env.get("SDV2_OBS_PASSWORD")
    if password is None and use_keyring:
        password = keyring_get(host, port)
    if password is None:
        password = str(data.get("password") or "")
    timeout = data.get("timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0.1 <= timeout <= 120:
        raise EngineError(f"OBS timeout {timeout!r} in {path} must be seconds from 0.1 to 120; fix or delete the file")
    return ObsSettings(host=host, port=port, password=password, timeout=timeout)


def save_settings(settings: ObsSettings, path: Path | None = None, *, use_keyring: bool = True) -> str:
    """Save host/port to the settings file and the password to the keyring (or, without one, to the 0600 file).

    Returns where the password went: ``"keyring"``, ``"file"`` or ``"none"`` (empty password)."""
    path = path or settings_path()
    data = _read_file(path)
    data.update(host=settings.host, port=settings.port)
    data.pop("password", None)
    where = "none"
    if settings.password:
        if use_keyring and keyring_set(settings.host, settings.port, settings.password):
            where = "keyring"
        else:
            data["password"] = settings.password
            where = "file"
    try:
        write_private(path, json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise EngineError(f"cannot write OBS settings {path} ({e.strerror}); check the folder's permissions") from None
    return where
