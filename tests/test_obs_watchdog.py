"""The OBS script's watchdog inside a real headless OBS: when the app that published its control API dies (SIGKILL,
no clean shutdown), the styled source is hidden in OBS instead of freezing its last frame on air; while the app
answers it is left alone, and when an app streams again the source comes back. Skipped without the `obs` binary
and Xvfb (the watchdog's logic is also tested without OBS)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for

headless = pytest.importorskip("sdv2_studio.obs_bridge.headless")
if headless.obs_binary() is None:
    pytest.skip("OBS Studio is not installed (apt-get install obs-studio xvfb)", allow_module_level=True)

from sdv2_studio.obs_bridge.client import ObsClient  # noqa: E402
from sdv2_studio.obs_bridge.obs_script import STYLED_SOURCE, WATCH_MISSES, WATCH_SECONDS, ScriptLogic  # noqa: E402
from sdv2_studio.obs_bridge.output import INPUT_NAME, attach_stream, free_udp_port  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "obs_bridge" / "obs_script.py"
FAKE_APP = """
import sys, time
from pathlib import Path
from sdv2_studio.obs_bridge.control import ControlServer

class App:
    def status(self): return {"state": "running", "preset": None}
    def preset_names(self): return []
    def apply_preset(self, name): raise ValueError(name)
    def set_steps(self, steps): raise ValueError(steps)
    def start(self, wait=True): pass
    def stop(self): pass

ControlServer(App(), control_path=Path(sys.argv[1])).start()
print("ready", flush=True)
time.sleep(600)
"""


def test_the_script_hides_the_styled_source_when_the_app_dies(tmp_path):
    assert STYLED_SOURCE == INPUT_NAME  # the script (stdlib only) spells the name itself
    control = tmp_path / "control.json"
    def launch_app() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", FAKE_APP, str(control)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    app = launch_app()
    obs = headless.HeadlessObs(tmp_path / "obs", scripts=[(SCRIPT, {})], env={"SDV2_CONTROL_FILE": str(control)})
    try:
        obs.start()
        client = ObsClient(obs.settings)
        client.connect()
        try:
            att = attach_stream(client, "Scene", f"udp://127.0.0.1:{free_udp_port()}")

            def enabled() -> bool:
                return client.call("GetSceneItemEnabled", {"sceneName": "Scene", "sceneItemId": att.scene_item_id}
                                   )["sceneItemEnabled"]

            time.sleep(WATCH_SECONDS * (WATCH_MISSES + 1))  # several watchdog checks while the app answers
            assert enabled(), "the watchdog hid the source of an app that answers"
            app.send_signal(signal.SIGKILL)  # a crash: the control file stays, nothing answers
            app.wait(10)
            assert control.exists()
            hidden = wait_for(lambda: not enabled(), 60)
            assert hidden, f"still shown after the app died; OBS log:\n{obs.log_tail()}"
            app = launch_app()  # streaming again: the watchdog shows what it hid
            shown = wait_for(enabled, 60)
            assert shown, f"still hidden although the app answers; OBS log:\n{obs.log_tail()}"
            print(f"\nwatchdog: hidden {hidden:.1f} s after the app died, shown {shown:.1f} s after it came back "
                  f"(checks every {WATCH_SECONDS} s)")
        finally:
            client.close()
    finally:
        if app.poll() is None:
            app.kill()
        obs.stop()


class _Api:
    def __init__(self):
        self.hidden: list[str] = []
        self.shown: list[list[str]] = []
        self.logs: list[str] = []

    def hide_source(self, name: str) -> list[str]:
        self.hidden.append(name)
        return ["Live"]

    def show_source(self, name: str, scenes: list[str]) -> None:
        self.shown.append(scenes)

    def log(self, message: str) -> None:
        self.logs.append(message)


class _Running:
    def status(self):
        return {"state": "running"}


def test_watchdog_hides_a_silent_or_dead_app_once_and_shows_it_again_when_it_answers(tmp_path, monkeypatch):
    import json
    import os

    from sdv2_studio.obs_bridge.control import ControlServer
    from sdv2_studio.obs_bridge.control_client import ControlClient

    control = tmp_path / "control.json"
    monkeypatch.setenv("SDV2_CONTROL_FILE", str(control))
    api = _Api()
    logic = ScriptLogic(api, connect=lambda: ControlClient.from_file(timeout=0.5))
    assert not any(logic.watch() for _ in range(WATCH_MISSES + 1)) and api.hidden == []  # no app: a clean quit
    port = headless.free_tcp_port()  # a live process that does not answer: a hang
    control.write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "token": "t", "pid": os.getpid()}))
    results = [logic.watch() for _ in range(WATCH_MISSES + 2)]
    assert results == [False] * (WATCH_MISSES - 1) + [True, False, False] and api.hidden == [INPUT_NAME]
    assert "does not answer" in logic.status_text and logic.hidden_in == ["Live"]

    server = ControlServer(_Running(), control_path=control).start()  # it answers again, streaming
    try:
        assert logic.watch() is False and api.shown == [["Live"]] and logic.hidden_in == []
    finally:
        server.stop()

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(30)
    control.write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "token": "t", "pid": gone.pid}))
    assert logic.watch() is True and api.hidden == [INPUT_NAME, INPUT_NAME]  # a crash: hidden at the first check
