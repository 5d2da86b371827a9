"""The local control API (a real HTTP server around a real StreamSession with the tiny model), the OBS script's
logic without OBS (a stand-in for obspython, the real API behind it), and the `sdv2 obs` CLI plumbing."""

from __future__ import annotations

import argparse
import json
import os
import stat
import time
import urllib.request

import numpy as np
import pytest
from helpers import wait_for
from sdv2_studio.engine.api import EngineConfig
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.io.sinks import CallbackSink
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.obs_bridge.cli import register_cli
from sdv2_studio.obs_bridge.control import ControlServer
from sdv2_studio.obs_bridge.control_client import TOKEN_HEADER, ControlClient, ControlError, read_control_file
from sdv2_studio.obs_bridge.obs_script import KNOWN_PRESETS_KEY, ScriptLogic, format_status
from sdv2_studio.obs_bridge.preset_book import PresetBook
from sdv2_studio.obs_bridge.session import StreamSession

PRESETS = {"anime": {"prompt": "anime, cel shading", "steps": 1}, "ink": {"prompt": "ink drawing", "transition": 5}}


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


@pytest.fixture
def session(bundle):
    received: list[np.ndarray] = []
    s = StreamSession(
        EngineConfig(model="tiny", size=(64, 64), queue_frames=8, prompt_cache_dir="", controls=Controls(steps=2)),
        open_source=lambda size: TestPatternSource(size, fps=30, realtime=True),
        open_sinks=lambda source: {"out": CallbackSink(lambda f, pts: received.append(f))},
        presets=PresetBook(PRESETS), bundle=bundle)
    s.received = received
    yield s
    s.stop()


@pytest.fixture
def server(session, tmp_path):
    srv = ControlServer(session, control_path=tmp_path / "control.json").start()
    yield srv
    srv.stop()


def test_control_api_drives_a_real_session(server, session):
    path = server.control_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    url, token = read_control_file(path)
    assert url == server.url and token == server.token and len(token) >= 32
    api = ControlClient(url, token)
    assert api.status()["state"] == "stopped"
    assert api.presets() == {"presets": ["anime", "ink"], "current": None}

    assert api.start()["state"] in ("starting", "running")
    assert wait_for(lambda: api.status()["state"] == "running" and len(session.received) > 8, 30)
    status = api.status()
    assert status["engine"]["frames_out"] > 0 and status["frames_out"] > 0 and status["error"] is None

    controls = api.apply_preset("anime")["controls"]
    assert controls["prompt"] == "anime, cel shading" and controls["steps"] == 1
    assert session.engine.controls.steps in (1, 2)  # applied at the next chunk boundary
    assert wait_for(lambda: session.engine.controls.steps == 1, 30)
    assert api.set_steps(3)["controls"]["steps"] == 3
    assert api.status()["preset"] == "anime"
    ink = api.apply_preset("ink")["controls"]
    assert ink["transition_chunks"] == 5 and ink["steps"] == 3  # a preset changes only what it names

    with pytest.raises(ControlError, match="unknown preset 'nope'; known presets: anime, ink"):
        api.apply_preset("nope")
    with pytest.raises(ControlError, match="denoising steps|steps"):
        api.set_steps(9)
    with pytest.raises(ControlError, match="needs 'steps'"):
        api.request("POST", "/steps", {"steps": "two"})

    assert api.stop()["state"] == "stopped"
    n = len(session.received)
    time.sleep(0.3)
    assert len(session.received) == n  # really stopped
    assert api.set_steps(2)["controls"]["steps"] == 2  # stopped: the engine keeps it for the next start
    assert api.start()["state"] in ("starting", "running")  # restart reuses the loaded model
    assert wait_for(lambda: len(session.received) > n + 4, 30)
    c = session.engine.controls  # the restarted stream runs with every control set before
    assert (c.prompt, c.steps, c.transition_chunks) == ("ink drawing", 2, 5)


def test_control_api_refuses_wrong_tokens_hosts_and_paths(server):
    with pytest.raises(ControlError, match=f"missing or wrong {TOKEN_HEADER}"):
        ControlClient(server.url, "guess").status()
    with pytest.raises(ControlError, match="unknown endpoint"):
        ControlClient(server.url, server.token).request("GET", "/nothing")
    req = urllib.request.Request(f"{server.url}/v1/status", headers={TOKEN_HEADER: server.token,
                                                                     "Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=2)
    assert err.value.code == 403
    with pytest.raises(EngineError, match="loopback"):
        ControlServer(object(), host="0.0.0.0", publish=False)


def test_control_file_goes_away_with_the_server(session, tmp_path):
    path = tmp_path / "control.json"
    srv = ControlServer(session, control_path=path).start()
    url = srv.url
    srv.stop()
    assert not path.exists()
    with pytest.raises(ControlError, match="not running"):
        read_control_file(path)
    with pytest.raises(ControlError, match="does not answer"):
        ControlClient(url, "t", timeout=0.5).status()


# -- the OBS script's logic -------------------------------------------------------------------------------------------


class FakeObs:
    """Stands in for obspython: settings are dicts, properties are lists, hotkeys are recorded."""

    def __init__(self) -> None:
        self.hotkeys: dict[int, tuple[str, str, object]] = {}
        self.bindings: dict[int, object] = {}
        self.logs: list[str] = []

    def properties(self):
        return {}

    def add_list(self, props, name, label, items):
        props[name] = list(items)

    def set_list_items(self, props, name, items):
        props[name] = list(items)

    def add_int_slider(self, props, name, label, lo, hi):
        props[name] = (lo, hi)

    def add_button(self, props, name, label, callback):
        props[name] = callback

    def add_info(self, props, name, text):
        props[name] = text

    def set_info(self, props, name, text):
        props[name] = text

    def get_str(self, settings, name):
        return settings.get(name, "")

    def get_int(self, settings, name):
        return settings.get(name, 0)

    def set_str(self, settings, name, value):
        settings[name] = value

    def set_default_str(self, settings, name, value):
        settings.setdefault(name, value)

    def set_default_int(self, settings, name, value):
        settings.setdefault(name, value)

    def register_hotkey(self, name, description, callback):
        hotkey = len(self.hotkeys) + 1
        self.hotkeys[hotkey] = (name, description, callback)
        return hotkey

    def load_hotkey(self, hotkey_id, settings, key):
        self.bindings[hotkey_id] = settings.get(key)

    def save_hotkey(self, hotkey_id, settings, key):
        settings[key] = [{"key": f"OBS_KEY_F{hotkey_id}"}]

    def unregister_hotkey(self, hotkey_id):
        del self.hotkeys[hotkey_id]

    def log(self, message):
        self.logs.append(message)

    def press(self, name: str) -> None:
        for hk_name, _, callback in self.hotkeys.values():
            if hk_name == f"sdv2.preset.{name}":
                callback(True)
                callback(False)  # key release: nothing happens
                return
        raise KeyError(name)


def test_script_logic_drives_the_app_and_remembers_presets_for_hotkeys(server, session):
    api = FakeObs()
    logic = ScriptLogic(api, connect=lambda: ControlClient(server.url, server.token))
    settings: dict = {}
    logic.defaults(settings)
    settings[KNOWN_PRESETS_KEY] = json.dumps(["retired"])  # seen in an earlier session
    logic.update(settings)  # OBS may replay saved values before load: nothing is sent
    logic.load(settings)
    assert session.preset is None
    assert logic.presets == ["retired", "anime", "ink"]
    assert sorted(n for n, _, _ in api.hotkeys.values()) == ["sdv2.preset.anime", "sdv2.preset.ink",
                                                             "sdv2.preset.retired"]
    assert logic.status_text.startswith("stopped")

    api.press("ink")
    assert session.preset == "ink"
    settings["preset"] = "anime"
    settings["steps"] = 4
    logic.update(settings)
    assert session.preset == "anime" and session.engine.config.controls.steps == 4  # the engine keeps them

    props = logic.properties()
    assert props["preset"] == [("(choose a preset)", ""), ("retired", "retired"), ("anime", "anime"), ("ink", "ink")]
    assert props["steps"] == (1, 4)
    assert props["start"](props) is True  # the Start button
    assert wait_for(lambda: session.state == "running", 30)
    props["refresh"](props)
    assert props["status"].startswith("running | preset anime | 4 step(s)")
    props["stop"](props)
    assert session.state == "stopped"

    api.press("retired")  # the app no longer has it: the status says so, nothing raises
    assert "unknown preset 'retired'" in logic.status_text

    logic.save(settings)
    assert json.loads(settings[KNOWN_PRESETS_KEY]) == ["retired", "anime", "ink"]
    assert all(settings[f"hotkey.{n}"] for n in ("anime", "ink", "retired"))
    logic.unload()
    assert api.hotkeys == {}


def test_script_logic_without_the_app_reports_instead_of_failing(tmp_path, monkeypatch):
    monkeypatch.setenv("SDV2_CONTROL_FILE", str(tmp_path / "absent.json"))
    api = FakeObs()
    logic = ScriptLogic(api)
    settings = {KNOWN_PRESETS_KEY: json.dumps(["anime"]), "hotkey.anime": [{"key": "OBS_KEY_F5"}]}
    logic.load(settings)
    assert "not running" in logic.status_text and api.logs
    assert [n for n, _, _ in api.hotkeys.values()] == ["sdv2.preset.anime"]  # the binding survives app absence
    assert list(api.bindings.values()) == [[{"key": "OBS_KEY_F5"}]]
    api.press("anime")
    assert "not running" in logic.status_text


def test_format_status_is_one_line():
    line = format_status({"state": "running", "preset": "ink", "controls": {"steps": 2}, "engine": {"fps": 14.96},
                          "obs": {"warnings": ["OBS renders 20.0 fps instead of 30"]}})
    assert line == "running | preset ink | 2 step(s) | 15.0 fps | OBS renders 20.0 fps instead of 30"
    assert format_status({"state": "error", "error": "camera gone"}) == "error: camera gone"


# -- CLI ---------------------------------------------------------------------------------------------------------------


def cli(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sdv2")
    register_cli(p.add_subparsers(dest="command", required=True))
    return p.parse_args(list(argv))


def test_cli_app_commands_use_the_control_api(server, session, capsys, monkeypatch):
    monkeypatch.setenv("SDV2_CONTROL_FILE", str(server.control_path))
    args = cli("obs", "app", "preset", "anime")
    assert args.fn(args) == 0
    assert json.loads(capsys.readouterr().out)["controls"]["steps"] == 1
    args = cli("obs", "app", "presets")
    args.fn(args)
    assert json.loads(capsys.readouterr().out)["current"] == "anime"
    args = cli("obs", "app", "steps", "x")
    with pytest.raises(EngineError, match="number of steps"):
        args.fn(args)
    monkeypatch.setenv("SDV2_CONTROL_FILE", os.devnull + ".absent")
    args = cli("obs", "app", "status")
    with pytest.raises(EngineError, match="not running"):
        args.fn(args)


def test_cli_attach_refuses_a_feedback_loop_and_obs_commands_report_unreachable_obs(monkeypatch):
    args = cli("obs", "attach", "--scene", "Live", "--input", "Live")
    with pytest.raises(EngineError, match="feeds the output back"):
        args.fn(args)
    monkeypatch.setenv("SDV2_OBS_PASSWORD", "pw")
    from sdv2_studio.obs_bridge.headless import free_tcp_port

    port = free_tcp_port()
    args = cli("obs", "status", "--port", str(port), "--timeout", "1")
    with pytest.raises(EngineError, match=f"nothing answers at 127.0.0.1:{port}"):
        args.fn(args)


def test_obs_script_loads_in_a_bare_python_without_touching_sys_path():
    """OBS's Python has none of the app's packages: the script must need only the standard library."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "obs_bridge" / "obs_script.py"
    code = (
        "import importlib.util, sys\n"
        "before = list(sys.path)\n"
        f"spec = importlib.util.spec_from_file_location('obs_script', {str(script)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "assert sys.path == before, 'sys.path changed'\n"
        "assert 'numpy' not in sys.modules and 'sdv2_studio.engine' not in sys.modules\n"
        "print(mod.script_description()[:30], mod.ControlClient.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "<b>StreamDiffusionV2</b><br>Re sdv2_studio.obs_bridge.control_client"


def test_cli_prints_the_script_path(capsys):
    args = cli("obs", "script-path")
    assert args.fn(args) == 0
    assert capsys.readouterr().out.strip().endswith("obs_bridge/obs_script.py")


# ---------------------------------------------------------------- hostile clients on raw sockets


def _raw(port: int, data: bytes = b"", timeout: float = 30.0):
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if data:
        sock.sendall(data)
    return sock


def _response(sock) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket's timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _post(server, headers: str, body: bytes = b"") -> bytes:
    head = (f"POST /v1/steps HTTP/1.1\r\nHost: 127.0.0.1\r\n{TOKEN_HEADER}: {server.token}\r\n{headers}"
            "\r\n").encode()
    return head + body


@pytest.mark.parametrize("headers, status, words", [
    ("Content-Length: -5\r\n", 400, "bad Content-Length"),
    ("Content-Length: abc\r\n", 400, "bad Content-Length"),
    ("Content-Length: +12\r\n", 400, "bad Content-Length"),
    ("Content-Length: 2\r\nContent-Length: 12\r\n", 400, "bad Content-Length"),
    ("Content-Length: 99999999999\r\n", 413, "larger than"),
    ("Transfer-Encoding: chunked\r\n", 411, "chunked"),
], ids=["negative", "non-numeric", "signed", "repeated", "oversized", "chunked"])
def test_control_api_refuses_bad_body_lengths_with_one_line_and_reads_no_further(server, headers, status, words):
    sock = _raw(server.port, _post(server, headers, b'{"steps": 1}'))  # we keep our side open: no EOF to wait for
    try:
        reply = _response(sock)  # the server answers and closes; it never waits for more bytes
    finally:
        sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), reply
    error = json.loads(body)["error"]
    assert words in error and "\n" not in error


def test_control_api_refuses_a_body_shorter_than_its_length(server):
    import socket

    sock = _raw(server.port, _post(server, "Content-Length: 100\r\n", b'{"steps": 1'))
    sock.shutdown(socket.SHUT_WR)
    reply = _response(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 400") and b"ended after 11 of 100 bytes" in reply


@pytest.fixture
def strict_server(session, tmp_path):
    srv = ControlServer(session, publish=False, idle_seconds=1.0, request_seconds=3.0, max_connections=4).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("first", [b"", b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"], ids=["silent", "half"])
def test_idle_and_half_sent_connections_are_dropped_and_block_nobody(strict_server, first):
    idle = _raw(strict_server.port, first)
    try:
        # meanwhile another client is served
        assert ControlClient(strict_server.url, strict_server.token).status()["state"] == "stopped"
        assert _response(idle) == b""  # dropped by the server (the socket's own 30 s timeout would raise instead)
    finally:
        idle.close()


def test_a_client_dripping_bytes_is_dropped_at_the_request_deadline(strict_server):
    request = _post(strict_server, "Content-Length: 12\r\n", b'{"steps": 1}')
    sock = _raw(strict_server.port)
    sent = 0
    try:
        for byte in request:  # one byte per 0.2 s: each read is in time, the whole request never is
            sock.sendall(bytes([byte]))
            sent += 1
            time.sleep(0.2)
    except OSError:  # the server closed the connection under us
        pass
    finally:
        sock.close()
    assert sent < len(request)  # dropped before the request was complete (~15 of its bytes at 3 s)


def test_connections_beyond_the_bound_get_503_and_the_server_recovers(session):
    srv = ControlServer(session, publish=False, idle_seconds=60.0, max_connections=2).start()
    try:
        idle = [_raw(srv.port) for _ in range(2)]  # both slots held by silent clients
        extra = _raw(srv.port)
        reply = _response(extra)
        extra.close()
        assert reply.startswith(b"HTTP/1.1 503") and b"too many connections" in reply
        for sock in idle:
            sock.close()
        client = ControlClient(srv.url, srv.token)

        def served() -> bool:
            try:
                return client.status()["state"] == "stopped"
            except ControlError:
                return False

        assert wait_for(served)  # the slots come back once the clients are gone
    finally:
        srv.stop()
