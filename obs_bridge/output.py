"""Styled video into OBS, one click: create or update (idempotently) the "StreamDiffusionV2" input in a scene.

Two feeds, both without any OBS plugin:

* ``attach_stream``: an OBS Media Source (``ffmpeg_source``) reading our low-latency MPEG-TS over UDP (or SRT),
  with ``is_local_file=false``, ``input_format=mpegts`` and ``buffering_mb=0`` (measured ~200 ms glass-to-OBS at
  30 fps; the default 2 MB buffer gave ~800 ms). Works on every OS.
* ``attach_camera``: a video capture device source (``v4l2_input`` on Linux, ``dshow_input`` on Windows,
  ``macos-avcapture`` on macOS; the kind is discovered at runtime) showing the virtual camera we write to.

Calling either again updates the settings of the existing input (leaving it alone when they are unchanged, so
a running stream is not interrupted) and makes sure it is in the scene; a same-named input of another kind
(e.g. switching from the stream to the camera) is replaced. A new scene item is scaled to fit the canvas;
later moves by the user are kept.

Zoom/Discord: either write a virtual camera ourselves (``engine.io.vcam``) or let OBS output its own
(:func:`start_obs_virtualcam`), never both on the OBS Virtual Camera, which is single-instance.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sdv2_studio.obs_bridge.client import ObsClient
from sdv2_studio.obs_bridge.errors import ObsCapabilityError, ObsError, ObsRequestError

log = logging.getLogger(__name__)

INPUT_NAME = "StreamDiffusionV2"
MEDIA_KIND = "ffmpeg_source"
#: Video capture device input kinds and the setting holding the device, in order of preference.
CAMERA_KINDS = (
    ("v4l2_input", "device_id"),
    ("dshow_input", "video_device_id"),
    ("macos-avcapture", "device"),
    ("macos-avcapture-fast", "device"),
    ("av_capture_input_v2", "device"),
    ("av_capture_input", "device"),
)
#: pyvirtualcam's backend name for the single-instance OBS Virtual Camera.
OBS_VCAM_BACKEND = "obs"
NOT_FOUND, ALREADY_EXISTS, NOT_AVAILABLE = 600, 601, 604


@dataclass
class Attachment:
    """Where the styled video shows up in OBS."""

    scene: str
    input_name: str
    kind: str
    settings: dict = field(default_factory=dict)
    scene_item_id: int = 0
    created: bool = False  # False: an existing input was updated
    changed: bool = True  # False: the existing input already had exactly these settings


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody on ``host`` uses right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def media_source_settings(url: str) -> dict:
    """``ffmpeg_source`` settings that play our ``udp://`` or ``srt://`` MPEG-TS with minimal latency.

    For SRT OBS listens (``mode=listener``) and our sender calls, so either side can restart first. ``buffering_mb=0``
    also sets FFmpeg's ``nobuffer`` flag (OBS 29's media-playback does). Shorter stream probing through OBS 29's
    ``ffmpeg_options`` (``probesize=32 analyzeduration=1 fpsprobesize=0``, which cut PyAV's first frame from 0.7 s to
    50 ms) made no measurable difference to OBS's latency or time to first picture in `sdv2 bench transport`
    (alternating runs on a loaded 2-core machine), so it is left out."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "udp":
        listen = f"udp://{parts.hostname}:{parts.port}?overrun_nonfatal=1&fifo_size=50000"
    elif scheme == "srt":
        listen = f"srt://{parts.hostname}:{parts.port}?mode=listener&transtype=live"
    else:
        raise ObsError(f"unsupported stream {url!r} for OBS: use udp://HOST:PORT or srt://HOST:PORT")
    return {
        "is_local_file": False,
        "input": listen,
        "input_format": "mpegts",
        "buffering_mb": 0,  # the default 2 MB adds ~600 ms
        "reconnect_delay_sec": 1,
        "restart_on_activate": True,
        "clear_on_media_end": False,  # keep the last picture through a sender restart
        "close_when_inactive": False,
        "hw_decode": False,
    }


def stream_port(client: ObsClient, name: str = INPUT_NAME) -> int | None:
    """The port the existing ``name`` media source listens on (to keep using it across runs), else None."""
    try:
        reply = client.call("GetInputSettings", {"inputName": name})
    except ObsRequestError as e:
        if e.code == NOT_FOUND:
            return None
        raise
    url = str(reply.get("inputSettings", {}).get("input", ""))
    try:
        return urlsplit(url).port if url.startswith(("udp://", "srt://")) else None
    except ValueError:
        return None


def _require_scene(client: ObsClient, scene: str) -> None:
    scenes = client.scene_names()
    if scene not in scenes:
        raise ObsError(f"OBS has no scene {scene!r}; pick one of: {', '.join(scenes) or '(none)'} "
                       "(or create it in OBS)")


def _fit_to_canvas(client: ObsClient, scene: str, item_id: int) -> None:
    video = client.call("GetVideoSettings")
    client.call("SetSceneItemTransform", {"sceneName": scene, "sceneItemId": item_id, "sceneItemTransform": {
        "positionX": 0.0, "positionY": 0.0, "alignment": 5,  # top-left
        "boundsType": "OBS_BOUNDS_SCALE_INNER", "boundsAlignment": 0,
        "boundsWidth": float(video["baseWidth"]), "boundsHeight": float(video["baseHeight"]),
    }})


def ensure_input(client: ObsClient, scene: str, name: str, kind: str, settings: dict, *,
                 fit_canvas: bool = True) -> Attachment:
    """Create input ``name`` of ``kind`` in ``scene`` with ``settings``, or update it if it exists (idempotent)."""
    _require_scene(client, scene)
    current_kind, current = None, {}
    try:
        reply = client.call("GetInputSettings", {"inputName": name})
        current_kind, current = reply.get("inputKind"), reply.get("inputSettings", {})
    except ObsRequestError as e:
        if e.code != NOT_FOUND:
            raise
    if current_kind is not None and current_kind != kind:
        log.info("replacing %s input %r by a %s input", current_kind, name, kind)
        client.call("RemoveInput", {"inputName": name})
        current_kind = None
    if current_kind is None:
        for attempt in range(20):  # a just-removed source can linger for a frame or two
            try:
                reply = client.call("CreateInput", {"sceneName": scene, "inputName": name, "inputKind": kind,
                                                    "inputSettings": settings, "sceneItemEnabled": True})
                break
            except ObsRequestError as e:
                if e.code != ALREADY_EXISTS or attempt == 19:
                    raise
                time.sleep(0.05)
        item_id = int(reply["sceneItemId"])
        if fit_canvas:
            _fit_to_canvas(client, scene, item_id)
        return Attachment(scene, name, kind, dict(settings), item_id, created=True)
    defaults = client.call("GetInputDefaultSettings", {"inputKind": kind}).get("defaultInputSettings", {})
    held = {**defaults, **current}  # GetInputSettings leaves out values equal to the defaults
    changed = any(held.get(key) != value for key, value in settings.items())
    if changed:
        client.call("SetInputSettings", {"inputName": name, "inputSettings": settings, "overlay": True})
    try:
        item_id = int(client.call("GetSceneItemId", {"sceneName": scene, "sourceName": name})["sceneItemId"])
    except ObsRequestError as e:
        if e.code != NOT_FOUND:
            raise
        item_id = int(client.call("CreateSceneItem", {"sceneName": scene, "sourceName": name,
                                                      "sceneItemEnabled": True})["sceneItemId"])
        if fit_canvas:
            _fit_to_canvas(client, scene, item_id)
    client.call("SetSceneItemEnabled", {"sceneName": scene, "sceneItemId": item_id, "sceneItemEnabled": True})
    return Attachment(scene, name, kind, dict(settings), item_id, created=False, changed=changed)


def attach_stream(client: ObsClient, scene: str, url: str, name: str = INPUT_NAME) -> Attachment:
    """Show the MPEG-TS stream our sink sends to ``url`` as input ``name`` in ``scene`` (see module docstring)."""
    info = client.connect()
    kind = info.require_kind("media source", MEDIA_KIND)
    att = ensure_input(client, scene, name, kind, media_source_settings(url))
    if att.changed and not att.created:  # new settings take effect when the media source reopens its input
        client.call("TriggerMediaInputAction", {"inputName": name,
                                                "mediaAction": "OBS_WEBSOCKET_MEDIA_INPUT_ACTION_RESTART"})
    return att


def camera_kind(client: ObsClient) -> tuple[str, str]:
    """(input kind, device setting) of this OBS's video capture device source."""
    info = client.connect()
    for kind, key in CAMERA_KINDS:
        found = info.find_kind(kind)
        if found:
            return found, key
    names = " / ".join(k for k, _ in CAMERA_KINDS)
    raise ObsCapabilityError(f"this OBS ({info.obs_version} on {info.platform}) has no video capture device "
                             f"input ({names}); use the stream output (--sink udp) instead")


def _device_value(client: ObsClient, name: str, key: str, device: str) -> str | None:
    """The value OBS lists for ``device`` in input ``name``'s device property (matched by value or name)."""
    try:
        items = client.call("GetInputPropertiesListPropertyItems",
                            {"inputName": name, "propertyName": key}).get("propertyItems", [])
    except ObsRequestError:
        return None
    for item in items:
        if device in (item.get("itemValue"), item.get("itemName")):
            return str(item.get("itemValue"))
    for item in items:
        if device.lower() in str(item.get("itemName", "")).lower():
            return str(item.get("itemValue"))
    return None


def attach_camera(client: ObsClient, scene: str, device: str, *, backend: str | None = None,
                  name: str = INPUT_NAME) -> Attachment:
    """Show the virtual camera ``device`` (what pyvirtualcam reports, e.g. ``/dev/video4``) in ``scene``.

    OBS cannot capture the OBS Virtual Camera into itself (feedback), so ``backend="obs"`` is refused."""
    if backend == OBS_VCAM_BACKEND:
        raise ObsError("OBS cannot show the OBS Virtual Camera inside OBS; use --sink udp for OBS and keep the "
                       "virtual camera for Zoom/Discord (or install Unity Capture on Windows)")
    kind, key = camera_kind(client)
    settings: dict = {key: device}
    if kind.startswith("v4l2_input"):
        settings["buffering"] = False  # lower latency
    att = ensure_input(client, scene, name, kind, settings)
    value = _device_value(client, name, key, device)
    if value is not None and value != device:
        client.call("SetInputSettings", {"inputName": name, "inputSettings": {key: value}, "overlay": True})
        att.settings[key] = value
    return att


#: Texture-sharing receivers in OBS: (our sink, OBS input kind, settings selecting our sender). UNVERIFIED: the
#: obs-spout2 plugin's "spout_capture" with "spoutsenders", OBS's macOS "syphon-input" (the server is picked by the
#: user in its properties); no Windows/macOS OBS was available to check.
TEXSHARE_KINDS = {"spout": ("spout_capture", "spoutsenders"), "syphon": ("syphon-input", None)}


def attach_texture_share(client: ObsClient, scene: str, kind: str, sender: str, *,
                         name: str = INPUT_NAME) -> Attachment:
    """Show our Spout/Syphon sender ``sender`` (``kind`` ``spout`` or ``syphon``) as input ``name`` in ``scene``."""
    obs_kind, key = TEXSHARE_KINDS[kind]
    found = client.connect().require_kind(f"{kind} receiver", obs_kind)
    return ensure_input(client, scene, name, found, {key: sender} if key else {})


def show_in_scene(client: ObsClient, scene: str, source: str, visible: bool, *, below: str | None = None) -> bool:
    """Show or hide ``source`` in ``scene``. Showing a source the scene lacks adds it, fitted to the canvas, just
    under ``below`` (or on top); hiding one it lacks does nothing. False when there was nothing to hide."""
    try:
        item_id = int(client.call("GetSceneItemId", {"sceneName": scene, "sourceName": source})["sceneItemId"])
    except ObsRequestError as e:
        if e.code != NOT_FOUND:
            raise
        if not visible:
            return False
        item_id = int(client.call("CreateSceneItem", {"sceneName": scene, "sourceName": source,
                                                      "sceneItemEnabled": True})["sceneItemId"])
        _fit_to_canvas(client, scene, item_id)
        if below:
            above = int(client.call("GetSceneItemId", {"sceneName": scene, "sourceName": below})["sceneItemId"])
            index = client.call("GetSceneItemIndex", {"sceneName": scene, "sceneItemId": above})["sceneItemIndex"]
            client.call("SetSceneItemIndex", {"sceneName": scene, "sceneItemId": item_id, "sceneItemIndex": index})
    client.call("SetSceneItemEnabled", {"sceneName": scene, "sceneItemId": item_id, "sceneItemEnabled": visible})
    return True


def park(client: ObsClient, scene: str, fallback: str | None = None, name: str = INPUT_NAME) -> None:
    """The stream stopped: hide the styled source ``name`` in ``scene`` (it would hold its last frame on air) and
    show ``fallback`` (e.g. the raw camera) there instead, if given: added under the styled source when the scene
    lacks it, so the next run covers it again without touching it."""
    if show_in_scene(client, scene, name, False) and fallback:
        show_in_scene(client, scene, fallback, True, below=name)


def detach(client: ObsClient, name: str = INPUT_NAME) -> bool:
    """Remove our input from OBS (every scene); False if it was not there."""
    try:
        client.call("RemoveInput", {"inputName": name})
    except ObsRequestError as e:
        if e.code == NOT_FOUND:
            return False
        raise
    return True


# -- OBS's own virtual camera -----------------------------------------------------------------------------------------


def obs_virtualcam_active(client: ObsClient) -> bool | None:
    """Whether OBS outputs its virtual camera; None if this OBS has none (error 604, e.g. no v4l2loopback)."""
    try:
        return bool(client.call("GetVirtualCamStatus").get("outputActive"))
    except ObsRequestError as e:
        if e.code == NOT_AVAILABLE:
            return None
        raise


def check_vcam_backend(client: ObsClient | None, backend: str | None) -> None:
    """Refuse to write the OBS Virtual Camera with pyvirtualcam while OBS itself outputs it."""
    if backend == OBS_VCAM_BACKEND and client is not None and obs_virtualcam_active(client):
        raise ObsError("OBS is already outputting its virtual camera: stop it in OBS (Stop Virtual Camera) or use "
                       "another backend (vcam/unitycapture, v4l2loopback); both cannot use it at once")


def start_obs_virtualcam(client: ObsClient, scene: str | None = None, *,
                         pyvirtualcam_backend: str | None = None) -> None:
    """Ask OBS to output its own virtual camera (optionally switching to ``scene`` first) for Zoom/Discord.

    Refused while our pyvirtualcam sink writes the OBS Virtual Camera (``pyvirtualcam_backend == "obs"``)."""
    if pyvirtualcam_backend == OBS_VCAM_BACKEND:
        raise ObsError("the app already writes the OBS Virtual Camera; OBS cannot output it too. Stop the app's "
                       "virtual camera output or keep using it for Zoom/Discord")
    active = obs_virtualcam_active(client)
    if active is None:
        raise ObsCapabilityError("this OBS has no virtual camera (on Linux load v4l2loopback: `sudo modprobe "
                                 "v4l2loopback exclusive_caps=1`)")
    if scene:
        _require_scene(client, scene)
        client.call("SetCurrentProgramScene", {"sceneName": scene})
    if not active:
        client.call("StartVirtualCam")


def stop_obs_virtualcam(client: ObsClient) -> None:
    """Stop OBS's virtual camera if it runs (no-op when it does not, or when OBS has none)."""
    if obs_virtualcam_active(client):
        client.call("StopVirtualCam")
