"""Camera devices per platform: how to open one with FFmpeg (libavdevice) and best-effort discovery.

* Linux: ``v4l2``; a camera is ``/dev/videoN`` (``camera:N`` means ``/dev/videoN``).
* Windows: ``dshow``; a camera is its friendly name, opened as ``video=<name>``.
* macOS: ``avfoundation``; a camera is its index or name (audio disabled with ``:none``).

``list_cameras`` reads ``/sys/class/video4linux`` on Linux (reliable; metadata-only nodes that UVC
drivers create are skipped). On Windows and macOS it asks FFmpeg's ``list_devices`` option and parses
the log lines it prints; that needs the PyAV wheel to include the ``dshow``/``avfoundation`` device
and depends on FFmpeg's log wording, so it may return an empty list (it never raises).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import av.logging

CAMERA_FORMATS = {"linux": "v4l2", "win32": "dshow", "darwin": "avfoundation"}


@dataclass(frozen=True)
class CameraInfo:
    """A camera as the user picks it: ``spec`` goes after ``camera:``; ``name`` is for display."""

    spec: str
    name: str


def camera_format(platform: str = sys.platform) -> str:
    """The libavdevice input format for cameras on ``platform`` (v4l2 on other Unixes)."""
    return CAMERA_FORMATS.get(platform, "v4l2")


def camera_url(
    name: str,
    *,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    platform: str = sys.platform,
) -> tuple[str, str, dict[str, str]]:
    """``(url, format, options)`` to pass to ``av.open`` for camera ``name``; ``size`` is ``(h, w)``."""
    fmt = camera_format(platform)
    options: dict[str, str] = {}
    if size is not None:
        options["video_size"] = f"{size[1]}x{size[0]}"
    if fps is not None:
        options["framerate"] = f"{fps:g}"
    if fmt == "dshow":
        url = name if name.startswith(("video=", "audio=")) else f"video={name}"
        options.setdefault("rtbufsize", "64M")  # avoid "real-time buffer full" drops at HD sizes
    elif fmt == "avfoundation":
        url = name if ":" in name else f"{name}:none"
        options.setdefault("framerate", "30")  # avfoundation refuses to open without a supported rate
    else:
        url = f"/dev/video{name}" if name.isdigit() else name
    return url, fmt, options


def list_cameras(platform: str = sys.platform) -> list[CameraInfo]:
    """Cameras that can be opened, best effort (see module docstring); never raises."""
    try:
        fmt = camera_format(platform)
        if fmt == "v4l2":
            return _list_v4l2()
        lines = _ffmpeg_device_list(fmt)
        return parse_dshow_devices(lines) if fmt == "dshow" else parse_avfoundation_devices(lines)
    except Exception:  # discovery is a convenience; the user can always type the name
        return []


def _list_v4l2(root: Path = Path("/sys/class/video4linux")) -> list[CameraInfo]:
    devices = sorted(Path("/dev").glob("video*"), key=lambda p: (len(p.name), p.name))
    cameras = []
    for dev in devices:
        info = root / dev.name
        index = _read(info / "index")
        if index not in (None, "0"):  # UVC: index 1 is the metadata node of the same camera
            continue
        cameras.append(CameraInfo(str(dev), _read(info / "name") or dev.name))
    return cameras


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ffmpeg_device_list(fmt: str) -> list[str]:
    """Log lines FFmpeg prints for ``-f <fmt> -list_devices true -i dummy``."""
    url = "dummy" if fmt == "dshow" else ""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture() as logs:
            try:
                av.open(url, format=fmt, options={"list_devices": "true"}).close()
            except (av.FFmpegError, OSError, ValueError):
                pass  # listing always "fails" to open
    finally:
        av.logging.set_level(level)
    return [message.rstrip("\n") for _, _, message in logs]


def parse_dshow_devices(lines: list[str]) -> list[CameraInfo]:
    """Video devices from dshow's list: ``"Name" (video)`` (FFmpeg >= 4.4) or a quoted name in the video section."""
    cameras, section = [], "video"
    for line in lines:
        if "DirectShow video devices" in line:
            section = "video"
        elif "DirectShow audio devices" in line:
            section = "audio"
        m = re.match(r'\s*"(.+)"\s*(?:\((\w+(?:,\s*\w+)*)\))?\s*$', line)
        if m and "Alternative name" not in line:
            kinds = m.group(2) or section
            if "video" in kinds:
                cameras.append(CameraInfo(m.group(1), m.group(1)))
    return cameras


def parse_avfoundation_devices(lines: list[str]) -> list[CameraInfo]:
    """Video devices from avfoundation's list: ``[0] FaceTime HD Camera`` lines before the audio section."""
    cameras, in_video = [], False
    for line in lines:
        if "video devices" in line:
            in_video = True
        elif "audio devices" in line:
            in_video = False
        elif in_video and (m := re.match(r"\s*\[(\d+)\]\s*(.+?)\s*$", line)):
            if not m.group(2).startswith("Capture screen"):
                cameras.append(CameraInfo(m.group(1), m.group(2)))
    return cameras
