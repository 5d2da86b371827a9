"""Services the window talks to besides the engine: model files, OBS, and the machine (Qt-free).

The window takes these as injected objects, so tests (and builds without the optional parts) pass stand-ins.
Every method may block (network, disk, device queries): the window only calls them from background tasks
(app/background.py), never on the UI thread. Failures are `EngineError`s with one line naming the fix.

* `ModelService` wraps `engine.hub` (catalogue, status, download with progress) and `engine.models`.
* `ObsService` wraps `obs_bridge` (OBS sources as input, the styled source in OBS, virtual camera). When
  `obs_bridge` or its optional dependencies are missing, `UnavailableObsService` says what to install.
* `gpus()` / `system_memory()` describe the machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.availability import Availability
from sdv2_studio.engine.io.protocols import FrameSink, FrameSource

Progress = Callable[[str, float], None]
log = logging.getLogger(__name__)


# -- machine ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total: int  # bytes
    free: int | None = None

    @property
    def label(self) -> str:
        short = self.name.replace("NVIDIA ", "").replace("GeForce ", "")
        return f"{self.index}: {short} · {self.total / 1024**3:.0f} GB"


def gpus() -> list[GpuInfo]:
    """CUDA devices torch can see (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        try:
            free, _ = torch.cuda.mem_get_info(i)
        except Exception:  # some drivers refuse before a context exists
            free = None
        out.append(GpuInfo(i, props.name, int(props.total_memory), free))
    return out


def system_memory() -> int | None:
    """Physical RAM in bytes (None if the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


# -- models ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelItem:
    name: str
    purpose: str
    status: str  # "downloaded" | "partial" | "missing"
    size: str  # human-readable download size
    size_bytes: int | None
    folder: str
    default: bool


class ModelService(Protocol):
    def weights_present(self) -> bool: ...
    def models_dir(self) -> Path: ...
    def items(self) -> list[ModelItem]: ...
    def free_space(self) -> int | None: ...
    def download(self, progress: Progress) -> None: ...


class HubModelService:
    """Model files through `engine.hub` (download, status) and `engine.models` (what the engine will load)."""

    def weights_present(self) -> bool:
        from sdv2_studio.engine.models import find_downloaded

        return find_downloaded() is not None

    def models_dir(self) -> Path:
        from sdv2_studio.engine.models import models_dir

        return models_dir()

    def _hub(self):
        try:
            from sdv2_studio.engine import hub
        except ImportError as e:  # pragma: no cover - hub ships with the engine
            raise EngineError(f"model downloads are not available in this build ({e})") from None
        return hub

    def items(self) -> list[ModelItem]:
        hub = self._hub()
        out = []
        for it in hub.catalogue():
            try:
                status = hub.status(it)
            except EngineError:
                status = "missing"
            out.append(ModelItem(it.name, it.purpose, status, hub.format_size(it.size, approx=True), it.size,
                                 str(hub.item_path(it)), it.default))
        return out

    def free_space(self) -> int | None:
        path = self.models_dir()
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return None

    def download(self, progress: Progress) -> None:
        """The default items (the 1.3B real-time model and its base); `progress` may raise to cancel."""
        self._hub().download(None, progress=progress)


# -- OBS -------------------------------------------------------------------------------------------------------------


class ObsService(Protocol):
    def address(self) -> tuple[str, int]: ...
    def configure(self, host: str, port: int, password: str) -> str: ...
    def status(self) -> str: ...
    def list_sources(self) -> list[str]: ...
    def list_scenes(self) -> list[str]: ...
    def check_feedback(self, capture: str, scene: str) -> None: ...
    def list_audio_inputs(self) -> list[str]: ...
    def set_audio_offset(self, inputs: list[str], offset_ms: int) -> None: ...
    def open_source(self, name: str, size: tuple[int, int], fps: float, fit: str = "crop") -> FrameSource: ...
    def open_output(self, size: tuple[int, int], fps: float, scene: str = "", capture: str | None = None,
                    fallback: str | None = None, plugin_channel: str | None = None) -> FrameSink: ...


OBS_INSTALL_HINT = "install the OBS extras: pip install 'streamdiffusion-studio[obs]'"


class UnavailableObsService:
    """Stand-in when obs_bridge (or obsws-python) is missing: every use names the fix."""

    def __init__(self, reason: str = f"OBS support is not installed; {OBS_INSTALL_HINT}"):
        self.reason = reason

    def address(self) -> tuple[str, int]:
        return "127.0.0.1", 4455

    def configure(self, host: str, port: int, password: str) -> str:
        raise EngineError(self.reason)

    def status(self) -> str:
        return self.reason

    def list_sources(self) -> list[str]:
        return []

    def list_scenes(self) -> list[str]:
        return []

    def check_feedback(self, capture: str, scene: str) -> None:
        return None

    def list_audio_inputs(self) -> list[str]:
        return []

    def set_audio_offset(self, inputs: list[str], offset_ms: int) -> None:
        raise EngineError(self.reason)

    def open_source(self, name: str, size: tuple[int, int], fps: float, fit: str = "crop") -> FrameSource:
        raise EngineError(self.reason)

    def open_output(self, size: tuple[int, int], fps: float, scene: str = "", capture: str | None = None,
                    fallback: str | None = None, plugin_channel: str | None = None) -> FrameSink:
        raise EngineError(self.reason)


class _ObsStreamSink(FrameSink):
    """The output feeding the styled source in OBS: the MPEG-TS sender of the media source, or the shared-memory
    writer of the plugin source. Closing it (Stop, or the app quitting) hides the styled source in its scene, so no
    frozen last frame stays on air, shows the fallback source there instead (if any), and closes its OBS
    connection."""

    def __init__(self, inner: FrameSink, client, scene: str, fallback: str | None = None):
        self.inner, self.client, self.scene, self.fallback = inner, client, scene, fallback

    def write(self, frame, pts_seconds: float | None = None) -> None:
        self.inner.write(frame, pts_seconds)

    def close(self) -> None:
        from sdv2_studio.obs_bridge.output import park

        try:
            self.inner.close()
            park(self.client, self.scene, self.fallback)
        except EngineError as e:  # OBS went away: nothing shows on its stream anyway
            log.warning("could not hide the styled source in OBS: %s", e)
        finally:
            self.client.close()


class BridgeObsService:
    """OBS through the `obs_bridge` package (obs-websocket): OBS scenes/sources as input (JPEG screenshots) and the
    styled video as a media source "StreamDiffusionV2" in the current program scene, fed over local UDP MPEG-TS
    (created or updated idempotently, as `sdv2 obs` does)."""

    def __init__(self):
        from sdv2_studio.obs_bridge.settings import load_settings

        self._load_settings = load_settings

    def _client(self):
        from sdv2_studio.obs_bridge.client import ObsClient

        return ObsClient(self._load_settings(), auto_reconnect=False)

    def address(self) -> tuple[str, int]:
        s = self._load_settings()
        return s.host, s.port

    def configure(self, host: str, port: int, password: str) -> str:
        """Save the connection (password to the OS keyring when available); returns where the password went. A new
        password is tried on OBS first: one OBS refuses is not saved (EngineError saying so)."""
        from sdv2_studio.obs_bridge.client import check_login
        from sdv2_studio.obs_bridge.errors import ObsAuthError
        from sdv2_studio.obs_bridge.settings import save_settings

        current = self._load_settings()
        current.host, current.port = host, int(port)
        if password:
            current.password = password
            try:
                check_login(current)
            except ObsAuthError:
                raise EngineError(f"OBS at {current.address} rejected this password, so it was not saved: copy it "
                                  "from OBS (Tools > WebSocket Server Settings > Show Connect Info) and enter it "
                                  "again") from None
        return save_settings(current)

    def status(self) -> str:
        with self._client() as client:
            return f"connected: {client.info.summary()}"

    def list_sources(self) -> list[str]:
        with self._client() as client:
            scenes = client.scene_names()
            inputs = [name for name, _kind in client.input_names()]
        return scenes + [n for n in inputs if n not in scenes]

    def list_scenes(self) -> list[str]:
        with self._client() as client:
            return client.scene_names()

    def list_audio_inputs(self) -> list[str]:
        from sdv2_studio.obs_bridge.av_sync import audio_inputs

        with self._client() as client:
            return audio_inputs(client)

    def set_audio_offset(self, inputs: list[str], offset_ms: int) -> None:
        """Delay the audio of ``inputs`` in OBS by ``offset_ms`` (obs_bridge.av_sync)."""
        from sdv2_studio.obs_bridge.av_sync import set_audio_offset

        with self._client() as client:
            set_audio_offset(client, inputs, offset_ms)

    def check_feedback(self, capture: str, scene: str) -> None:
        """EngineError (one line) when capturing ``capture`` would show the styled source in ``scene`` (default:
        the program scene): obs_bridge.scenes.refuse_feedback, the check `sdv2 obs attach` makes."""
        from sdv2_studio.obs_bridge.scenes import refuse_feedback

        with self._client() as client:
            scene = scene or client.call("GetCurrentProgramScene").get("currentProgramSceneName")
            refuse_feedback(capture, scene, client)

    def open_source(self, name: str, size: tuple[int, int], fps: float, fit: str = "crop") -> FrameSource:
        from sdv2_studio.obs_bridge.capture import ObsCaptureSource

        return ObsCaptureSource(name, self._load_settings(), size=size, fps=fps, fit=fit)

    def open_output(self, size: tuple[int, int], fps: float, scene: str = "", capture: str | None = None,
                    fallback: str | None = None, plugin_channel: str | None = None) -> FrameSink:
        """The styled source in ``scene`` (default: the current program scene): a media source fed over local UDP,
        or with ``plugin_channel`` the native plugin's source reading that shared-memory channel (``obs-source:``,
        opened by engine.io.sinks.open_sink as `sdv2 run --out` does). Refused when ``capture`` (the OBS source being
        styled) would show the output (obs_bridge.scenes.refuse_feedback). ``fallback`` shows in the styled source's
        place when the stream stops (obs_bridge.output.park)."""
        from sdv2_studio.engine.io.sinks import open_sink
        from sdv2_studio.obs_bridge.client import ObsClient
        from sdv2_studio.obs_bridge.native_plugin import attach_plugin_source
        from sdv2_studio.obs_bridge.output import attach_stream, free_udp_port, stream_port
        from sdv2_studio.obs_bridge.scenes import refuse_feedback

        client = ObsClient(self._load_settings())
        try:
            client.connect()
            scene = scene or client.call("GetCurrentProgramScene").get("currentProgramSceneName")
            refuse_feedback(capture, scene, client)
            url = "" if plugin_channel else f"udp://127.0.0.1:{stream_port(client) or free_udp_port()}"
            out = open_sink(f"obs-source:{plugin_channel}", fps=fps) if plugin_channel else open_sink(
                url, fps=fps, size=size)  # the plugin source shows frames at their own size
            try:
                if plugin_channel:
                    attach_plugin_source(client, scene, plugin_channel)
                else:
                    attach_stream(client, scene, url)
            except BaseException:
                out.close()
                raise
        except BaseException:
            client.close()
            raise
        return _ObsStreamSink(out, client, scene, fallback)


def vcam_availability(platform: str = sys.platform, sysfs: Path = Path("/sys")) -> Availability:
    """Whether a virtual camera can open, without opening one (an open camera may be in use by a meeting app)."""
    try:
        import pyvirtualcam  # noqa: F401
    except ImportError:
        return Availability(False, "needs pyvirtualcam: pip install pyvirtualcam")
    from sdv2_studio.engine.io.vcam import vcam_help

    if platform.startswith("linux"):
        if not (sysfs / "module" / "v4l2loopback").exists():
            return Availability(False, f"no virtual camera device: {vcam_help(platform)}")
        names = []
        for path in sorted((sysfs / "class" / "video4linux").glob("video*/name")):
            label = path.read_text(errors="replace").lower()  # v4l2loopback names them "Dummy video device ..."
            if "dummy" in label or "loopback" in label:
                names.append(path.parent.name)
        if not names:
            return Availability(False, f"v4l2loopback is loaded but made no device: {vcam_help(platform)}")
        return Availability(True, "virtual camera: " + ", ".join(f"/dev/{n}" for n in names))
    return Availability(None, f"uses the OBS Virtual Camera or Unity Capture; if Start reports none: "
                              f"{vcam_help(platform)}")


def open_virtual_camera(size: tuple[int, int], fps: float) -> FrameSink:
    """The styled video as a webcam (pyvirtualcam; engine.io.vcam). Raises EngineError naming the driver to
    install when none is available."""
    try:
        from sdv2_studio.engine.io.vcam import open_vcam_sink
    except ImportError as e:  # pragma: no cover - part of the engine
        raise EngineError(f"virtual camera output is not available in this build ({e})") from None
    return open_vcam_sink("vcam", fps=fps, size=size)


def default_obs_service() -> ObsService:
    try:
        return BridgeObsService()
    except ImportError as e:
        return UnavailableObsService(f"OBS support is not available ({e}); {OBS_INSTALL_HINT}")


def default_model_service() -> ModelService:
    return HubModelService()
