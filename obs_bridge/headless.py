"""Run a real OBS without a screen, for integration tests and CI (Linux: Debian's ``obs-studio`` + ``xvfb``).

    with HeadlessObs(tmp_path) as obs:       # own HOME, X display and obs-websocket port
        client = ObsClient(obs.settings)
        obs.kill(); obs.start()              # simulate a crash and a restart (same config, same port)

OBS has no command-line switch that enables its WebSocket server, so the config is seeded before launch: the
``[OBSWebSocket]`` section of ``global.ini`` (obs-websocket 5.0-5.4, e.g. Debian's 5.1.0) and
``plugin_config/obs-websocket/config.json`` (5.5+). Each instance gets a fresh HOME: two OBS sharing a config
folder overwrite each other's settings. Xvfb picks a free display itself (``-displayfd``); OBS renders with
Mesa's software GL. ``scripts`` are written into the scene collection so OBS loads them at start (Tools >
Scripts); that needs OBS's Python scripting support. ``env`` adds variables for OBS (and so its scripts).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.obs_bridge.settings import ObsSettings

COLLECTION = "sdv2-test"


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def obs_binary() -> str | None:
    """The ``obs`` executable on PATH, or None."""
    return shutil.which("obs")


class HeadlessObs:
    """One OBS instance under its own Xvfb (see module docstring). ``startup_timeout`` bounds waiting for the
    WebSocket server (it answered after ~1-10 s on a 2-core machine)."""

    def __init__(self, root: Path, *, port: int | None = None, password: str = "sdv2-headless-test",
                 scripts: list[tuple[Path, dict]] | None = None, startup_timeout: float = 60.0,
                 canvas: tuple[int, int] = (1280, 720), fps: int = 30, env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.home = self.root / "home"
        self.port = port or free_tcp_port()
        self.password = password
        self.scripts = scripts or []
        self.startup_timeout = startup_timeout
        self.canvas, self.fps = canvas, fps
        self.env = dict(env or {})
        self.display: str | None = None
        self.starts = 0
        self._xvfb: subprocess.Popen | None = None
        self._obs: subprocess.Popen | None = None
        self._log = None

    @property
    def settings(self) -> ObsSettings:
        return ObsSettings(host="127.0.0.1", port=self.port, password=self.password, timeout=5.0)

    @property
    def config_dir(self) -> Path:
        return self.home / ".config" / "obs-studio"

    @property
    def log_path(self) -> Path:
        return self.root / "obs.log"

    # -- config -------------------------------------------------------------------------------------------------------

    def seed_config(self) -> None:
        cfg = self.config_dir
        (cfg / "plugin_config" / "obs-websocket").mkdir(parents=True, exist_ok=True)
        (cfg / "basic" / "scenes").mkdir(parents=True, exist_ok=True)
        (cfg / "basic" / "profiles" / "sdv2").mkdir(parents=True, exist_ok=True)
        w, h = self.canvas
        (cfg / "global.ini").write_text(
            "[General]\nFirstRun=true\n\n"
            f"[Basic]\nProfile=sdv2\nProfileDir=sdv2\nSceneCollection={COLLECTION}\nSceneCollectionFile={COLLECTION}\n\n"
            "[OBSWebSocket]\nFirstLoad=false\nServerEnabled=true\n"
            f"ServerPort={self.port}\nAuthRequired=true\nServerPassword={self.password}\nAlertsEnabled=false\n")
        (cfg / "plugin_config" / "obs-websocket" / "config.json").write_text(json.dumps({
            "first_load": False, "server_enabled": True, "server_port": self.port, "auth_required": True,
            "server_password": self.password, "alerts_enabled": False}))
        (cfg / "basic" / "profiles" / "sdv2" / "basic.ini").write_text(
            f"[General]\nName=sdv2\n\n[Video]\nBaseCX={w}\nBaseCY={h}\nOutputCX={w}\nOutputCY={h}\n"
            f"FPSType=1\nFPSInt={self.fps}\n")
        collection = cfg / "basic" / "scenes" / f"{COLLECTION}.json"
        if not collection.exists():
            scene = {"id": "scene", "versioned_id": "scene", "name": "Scene",
                     "settings": {"items": [], "id_counter": 0, "custom_size": False}}
            data = {"name": COLLECTION, "current_scene": "Scene", "current_program_scene": "Scene",
                    "scene_order": [{"name": "Scene"}], "sources": [scene], "groups": [], "transitions": [],
                    "current_transition": "Fade", "transition_duration": 300,
                    "modules": {"scripts-tool": [{"path": str(p), "settings": s} for p, s in self.scripts]}}
            collection.write_text(json.dumps(data))

    # -- processes ----------------------------------------------------------------------------------------------------

    def _start_xvfb(self) -> None:
        if shutil.which("Xvfb") is None:
            raise EngineError("Xvfb is not installed: apt-get install xvfb")
        read, write = os.pipe()
        w, h = self.canvas
        self._xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write), "-screen", "0", f"{w}x{h}x24", "-nolisten", "tcp"],
            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(write)
        with os.fdopen(read) as f:
            number = f.readline().strip()
        if not number.isdigit():
            self._xvfb.kill()
            raise EngineError("Xvfb did not start (no display number)")
        self.display = f":{number}"

    def start(self) -> HeadlessObs:
        """Start Xvfb (once) and OBS; wait until obs-websocket accepts a connection."""
        binary = obs_binary()
        if binary is None:
            raise EngineError("OBS is not installed: apt-get install obs-studio")
        if self._obs is not None and self._obs.poll() is None:
            return self
        if not self.config_dir.exists():
            self.seed_config()
        if self._xvfb is None or self._xvfb.poll() is not None:
            self._start_xvfb()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "QT_", "WAYLAND"))}
        env.update(HOME=str(self.home), DISPLAY=self.display or "", LIBGL_ALWAYS_SOFTWARE="1",
                   XDG_CONFIG_HOME=str(self.home / ".config"), QT_QPA_PLATFORM="xcb")
        env.update(self.env)
        self._log = open(self.log_path, "ab")  # kept open for the process's lifetime
        self._obs = subprocess.Popen(
            [binary, "--minimize-to-tray", "--multi", "--disable-shutdown-check", "--disable-missing-files-check"],
            cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        self.wait_ready()
        return self

    def wait_ready(self) -> float:
        """Seconds until obs-websocket identified a client; EngineError (with the log tail) on timeout."""
        import obsws_python as obsws
        from sdv2_studio.obs_bridge.client import quiet_obsws_logging

        quiet_obsws_logging()
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.startup_timeout:
            if self._obs is None or self._obs.poll() is not None:
                raise EngineError(f"OBS exited during start-up; log:\n{self.log_tail()}")
            try:
                obsws.ReqClient(host="127.0.0.1", port=self.port, password=self.password, timeout=2).disconnect()
                return time.monotonic() - t0
            except Exception:  # not up yet
                time.sleep(0.2)
        raise EngineError(f"OBS did not open its WebSocket server within {self.startup_timeout:g} s; log:\n"
                          f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal_group(self, proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # OBS was started in its own session: its group id is its pid
        except ProcessLookupError:
            pass

    def _end(self, proc: subprocess.Popen, sig: int) -> None:
        """Send `sig` to `proc`'s group; SIGKILL it if it has not exited 10 s later."""
        self._signal_group(proc, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            self._signal_group(proc, signal.SIGKILL)
            proc.wait(10)

    def _end_obs(self, sig: int) -> None:
        if self._obs is not None:
            self._end(self._obs, sig)
            self._obs = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """Kill OBS at once (SIGKILL, like a crash); Xvfb keeps running for a restart."""
        self._end_obs(signal.SIGKILL)

    def stop(self) -> None:
        """Quit OBS (SIGTERM, then SIGKILL after 10 s) and Xvfb."""
        self._end_obs(signal.SIGTERM)
        if self._xvfb is not None:
            self._end(self._xvfb, signal.SIGTERM)
            self._xvfb = None

    @property
    def running(self) -> bool:
        return self._obs is not None and self._obs.poll() is None

    def __enter__(self) -> HeadlessObs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
