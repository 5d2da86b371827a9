"""The OBS checks of `sdv2 doctor` (OBS reachable; the native plugin installed), registered as extensions (entry
point group `sdv2_studio.doctor`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from sdv2_studio.engine.doctor import FAIL, OK, WARN, Check
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.obs_bridge.client import ObsClient
from sdv2_studio.obs_bridge.settings import load_settings


def _obs_address() -> tuple[str, int, Callable[[], str] | None]:
    """(host, port, connect) from the bridge's settings; when they are unreadable, the environment/defaults and no
    connect (the TCP check still runs)."""
    try:
        settings = load_settings()
    except EngineError:
        return (os.environ.get("SDV2_OBS_HOST", "127.0.0.1"),
                int(os.environ.get("SDV2_OBS_PORT", "4455") or 4455), None)

    def connect() -> str:
        settings.timeout = min(settings.timeout, 3.0)
        client = ObsClient(settings, auto_reconnect=False)
        try:
            return client.connect().summary()
        finally:
            client.close()

    return settings.host, settings.port, connect


def check_obs(timeout: float = 2.0) -> list[Check]:
    host, port, connect = _obs_address()
    hint = ("start OBS Studio 28+ and enable Tools > WebSocket Server Settings (port "
            f"{port}); set the password in the app's Output tab or SDV2_OBS_PASSWORD")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        return [Check("OBS", WARN, f"nothing answers at {host}:{port} ({e.strerror or e})", hint)]
    if connect is None:
        return [Check("OBS", WARN, f"something listens at {host}:{port}; the OBS settings file is unreadable",
                      "run `sdv2 obs status` to see what is wrong with the OBS connection settings")]
    try:
        return [Check("OBS", OK, f"{connect()} at {host}:{port}")]
    except EngineError as e:
        return [Check("OBS", FAIL, f"{host}:{port} answers but the bridge cannot use it: {e}", hint)]
    except Exception as e:  # any client failure is a finding, not a crash
        return [Check("OBS", FAIL, f"{host}:{port}: {type(e).__name__}: {e}", hint)]


def check_plugin() -> list[Check]:
    """The native OBS plugin: installed, or how to install it (obs_bridge.native_plugin.plugin_status, what the
    app's pickers show)."""
    from sdv2_studio.obs_bridge.native_plugin import plugin_status

    status = plugin_status()
    return [Check("OBS plugin", OK if status.ok else WARN, status.detail, status.fix)]
