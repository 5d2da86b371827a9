"""The OBS bridge: OBS (or a camera) in, styled video out into an OBS scene, scene-aware presets, health.

    bridge = ObsBridge(load_settings(), BridgeConfig(scene="Live", capture="Camera"), EngineConfig(), presets)
    bridge.start()          # connect + check OBS, load the model, capture, attach "StreamDiffusionV2", stream
    bridge.status()         # session + OBS health; the control API serves exactly this
    bridge.stop()

Frames flow source -> engine -> sinks only. The output is created/updated in OBS idempotently at every start
and again after OBS comes back from a restart (an input of a killed OBS may not have been saved). A health
thread samples ``GetStats`` every ``health_interval`` seconds; that also notices a lost connection and drives
the reconnect (with the client's backoff). Scene -> preset mapping follows ``CurrentProgramSceneChanged``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field

from sdv2_studio.engine.api import EngineConfig
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.mpegts import open_mpegts_sink
from sdv2_studio.engine.io.protocols import FrameSink, FrameSource
from sdv2_studio.engine.io.sources import open_source
from sdv2_studio.engine.io.texshare import open_texshare_sink
from sdv2_studio.engine.io.vcam import open_vcam_sink, parse_vcam_spec
from sdv2_studio.engine.models import ModelBundle
from sdv2_studio.obs_bridge.capture import ObsCaptureSource
from sdv2_studio.obs_bridge.client import ObsClient, ObsInfo
from sdv2_studio.obs_bridge.errors import ObsError
from sdv2_studio.obs_bridge.events import ObsEvents
from sdv2_studio.obs_bridge.health import ObsHealth, read_health
from sdv2_studio.obs_bridge.output import (
    INPUT_NAME,
    TEXSHARE_KINDS,
    Attachment,
    attach_camera,
    attach_stream,
    attach_texture_share,
    camera_kind,
    check_vcam_backend,
    free_udp_port,
    park,
    stream_port,
)
from sdv2_studio.obs_bridge.preset_book import PresetBook
from sdv2_studio.obs_bridge.scenes import ScenePresets, refuse_feedback
from sdv2_studio.obs_bridge.session import StreamSession
from sdv2_studio.obs_bridge.settings import ObsSettings

log = logging.getLogger(__name__)


@dataclass
class BridgeConfig:
    """What to capture, where to show it and how.

    ``capture``: an OBS source or scene name to capture (screenshot path); or ``camera``: an engine source spec
    (``camera:0``, ``/dev/video0``, ``test``, a file) read directly with PyAV. ``sink``: ``udp``, ``srt``, a
    virtual camera spec (``vcam``, ``vcam:DEVICE``, ``vcam/BACKEND``) or ``spout[:NAME]`` / ``syphon[:NAME]``
    (where their packages are installed). ``fps``: capture and output rate. ``fallback``: the OBS source shown in
    the styled source's place when the stream stops (None: the styled source is only hidden).
    """

    scene: str
    capture: str | None = None
    camera: str | None = None
    sink: str = "udp"
    fps: float = 15.0
    port: int | None = None  # UDP/SRT port; default: the existing input's, else a free one
    input_name: str = INPUT_NAME
    scene_presets: dict[str, str] = field(default_factory=dict)
    quality: int = 80
    health_interval: float = 2.0
    fallback: str | None = None


class ObsBridge(StreamSession):
    """A :class:`StreamSession` from and to OBS: it owns the OBS connection, attaches the styled output to a scene
    and reports OBS's health in its status (the control API target)."""

    def __init__(self, settings: ObsSettings, config: BridgeConfig, engine_config: EngineConfig,
                 presets: PresetBook | None = None, *, bundle: ModelBundle | None = None) -> None:
        if not config.capture and not config.camera:
            raise EngineError("choose an input: an OBS source to capture (--input NAME) or a camera (--camera SPEC)")
        self.settings, self.config = settings, config
        self.client = ObsClient(settings)
        self.client.on_reconnect.append(self._on_reconnect)
        super().__init__(engine_config, self._open_source, self._open_sinks, presets, bundle=bundle)
        self.status_extra["obs"] = self.obs_status
        self.attachment: Attachment | None = None
        self.health: ObsHealth | None = None
        self.obs_fps: float | None = None  # OBS's own frame rate (Settings > Video)
        self.output_url: str | None = None
        self.vcam_backend: str | None = None
        self.scenes = ScenePresets(config.scene_presets, self.apply_preset)
        self.events: ObsEvents | None = None
        self._capture: ObsCaptureSource | None = None
        self._stop = threading.Event()
        self._health_thread: threading.Thread | None = None

    # -- checks -------------------------------------------------------------------------------------------------------

    def connect(self) -> ObsInfo:
        """Connect and check that this OBS can do what the config asks (raises ObsError subclasses)."""
        info = self.client.connect()
        self.client.require_requests(["GetSourceScreenshot", "CreateInput", "SetInputSettings", "GetStats"])
        scenes = self.client.scene_names()
        if self.config.scene not in scenes:
            raise ObsError(f"OBS has no scene {self.config.scene!r}; pick one of: {', '.join(scenes)}")
        refuse_feedback(self.config.capture, self.config.scene, self.client, self.config.input_name)
        sink = self.config.sink.lower()
        if sink in ("udp", "srt"):
            info.require_kind("media source", "ffmpeg_source")
        elif sink.startswith("vcam"):
            camera_kind(self.client)
        elif sink.split(":")[0] in TEXSHARE_KINDS:
            info.require_kind(f"{sink.split(':')[0]} receiver", TEXSHARE_KINDS[sink.split(":")[0]][0])
        else:
            raise EngineError(f"unknown output {self.config.sink!r}: use udp, srt, vcam, spout or syphon")
        for name in self.config.scene_presets:
            if name not in scenes:
                log.warning("scene mapping names %r, which OBS does not have", name)
        video = self.client.call("GetVideoSettings")
        self.obs_fps = video["fpsNumerator"] / max(1, video["fpsDenominator"])
        return info

    # -- factories the session calls at start ------------------------------------------------------------------------

    def _open_source(self, size: tuple[int, int]) -> FrameSource:
        if self.config.capture:
            self._capture = ObsCaptureSource(self.config.capture, self.settings, size=size, fps=self.config.fps,
                                             quality=self.config.quality, fit=self.engine.config.fit)
            return self._capture
        spec = self.config.camera or ""
        if spec.lower() == "test":
            spec = f"test:{size[1]}x{size[0]}@{self.config.fps:g}"
        return open_source(spec, realtime=True, loop=True)

    def _open_sinks(self, source: FrameSource) -> dict[str, FrameSink]:
        cfg = self.config
        fps = min(cfg.fps, source.fps) if source.fps else cfg.fps
        sink = cfg.sink.lower()
        if sink in ("udp", "srt"):
            port = cfg.port or stream_port(self.client, cfg.input_name) or free_udp_port()
            url = f"{sink}://127.0.0.1:{port}"
            out = open_mpegts_sink(url, fps=fps)
            try:
                self.attachment = attach_stream(self.client, cfg.scene, url, cfg.input_name)
            except BaseException:
                out.close()
                raise
            self.output_url = url
            return {"obs": out}
        kind = sink.split(":")[0]
        if kind in TEXSHARE_KINDS:
            out = open_texshare_sink(cfg.sink, fps=fps, size=source.size)
            sender = getattr(out, "name", "")
            try:
                self.attachment = attach_texture_share(self.client, cfg.scene, kind, sender, name=cfg.input_name)
            except BaseException:
                out.close()
                raise
            self.output_url = f"{kind}:{sender}"
            return {"obs": out}
        backend, _device = parse_vcam_spec(cfg.sink)
        check_vcam_backend(self.client, backend)
        out = open_vcam_sink(cfg.sink, fps=fps, size=source.size)
        try:
            self.vcam_backend = out.backend
            check_vcam_backend(self.client, self.vcam_backend)
            self.attachment = attach_camera(self.client, cfg.scene, str(out.device), backend=self.vcam_backend,
                                            name=cfg.input_name)
        except BaseException:
            out.close()
            raise
        self.output_url = f"vcam:{out.device}"
        return {"obs": out}

    def _reattach(self) -> None:
        cfg = self.config
        if self.output_url is None:
            return
        kind, _, rest = self.output_url.partition(":")
        if self.output_url.startswith(("udp://", "srt://")):
            self.attachment = attach_stream(self.client, cfg.scene, self.output_url, cfg.input_name)
        elif kind in TEXSHARE_KINDS:
            self.attachment = attach_texture_share(self.client, cfg.scene, kind, rest, name=cfg.input_name)
        else:
            self.attachment = attach_camera(self.client, cfg.scene, self.output_url[len("vcam:"):],
                                            backend=self.vcam_backend, name=cfg.input_name)

    def _on_reconnect(self, client: ObsClient) -> None:
        log.info("OBS is back; re-attaching the output")
        self._reattach()

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self, wait: bool = True) -> None:
        """Check OBS, then start the stream (``wait=False``: in the background) and the health/event watchers."""
        self.connect()
        self._stop.clear()
        super().start(wait=wait)
        if self._health_thread is None or not self._health_thread.is_alive():
            self._health_thread = threading.Thread(target=self._watch, name="obs-health", daemon=True)
            self._health_thread.start()
        if self.config.scene_presets and self.events is None:
            self.events = ObsEvents(self.settings, {"CurrentProgramSceneChanged": self.scenes.on_scene_changed},
                                    on_connect=self._sync_scene).start()

    def _sync_scene(self, first: bool) -> None:
        scene = self.client.call("GetCurrentProgramScene").get("currentProgramSceneName")
        if scene:
            self.scenes.sync(str(scene))

    def _watch(self) -> None:
        while not self._stop.wait(self.config.health_interval):
            stats = self.client.try_call("GetStats")  # reconnects (with backoff) when OBS was away
            if stats is not None:
                self.health = ObsHealth.from_stats(stats)

    def stop(self) -> None:
        """Stop the stream; the styled source is hidden in OBS (no frozen frame on air), the fallback shown."""
        self._stop.set()
        if self.events is not None:
            self.events.stop()
            self.events = None
        super().stop()
        if self.attachment is not None and self.client.connected:
            try:
                park(self.client, self.attachment.scene, self.config.fallback, self.config.input_name)
            except EngineError as e:
                log.warning("could not hide the styled source in OBS: %s", e)
        if self._health_thread is not None:
            self._health_thread.join(timeout=self.settings.timeout + 1)
            self._health_thread = None
        self._capture = None

    def close(self) -> None:
        """Stop and disconnect."""
        self.stop()
        self.client.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- control API target -------------------------------------------------------------------------------------------

    def obs_status(self) -> dict:
        info = self.client.info
        cap = self._capture
        out: dict = {
            "connected": self.client.connected,
            "address": self.settings.address,
            "version": info.summary() if info else None,
            "reconnects": self.client.reconnects,
            "last_error": self.client.last_error,
            "output": self.output_url,
            "attachment": asdict(self.attachment) if self.attachment else None,
            "health": self.health.as_dict() if self.health else None,
            "warnings": self.health.warnings(self.obs_fps) if self.health else [],
            "scene_presets": {"mapping": self.scenes.mapping, "scene": self.scenes.current_scene,
                              "last_error": self.scenes.last_error},
        }
        if cap is not None:
            out["capture"] = {"source": cap.source, "captured": cap.captured, "dropped": cap.dropped,
                              "queued": cap.queued, "rate": round(cap.rate(), 1), "outages": cap.outages,
                              "last_error": cap.last_error}
        return out

    def read_health(self) -> ObsHealth:
        self.health = read_health(self.client)
        return self.health
