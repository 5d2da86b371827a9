"""Frame input/output through PyAV: sources (files, cameras, network, test pattern), sinks (mp4, callback),
and frame geometry (fit to the model resolution and back). Qt-free and OBS-free like all of ``engine``.
"""

from sdv2_studio.engine.io.cameras import CameraInfo, list_cameras
from sdv2_studio.engine.io.frames import check_size, fit_frame, restore_frame, round_size
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.io.protocols import FrameSink, FrameSource
from sdv2_studio.engine.io.sinks import CallbackSink, MP4Sink, open_sink, register_sink
from sdv2_studio.engine.io.sources import AVSource, camera_source, open_source

__all__ = [
    "AVSource",
    "CallbackSink",
    "CameraInfo",
    "FrameSink",
    "FrameSource",
    "MP4Sink",
    "TestPatternSource",
    "camera_source",
    "check_size",
    "fit_frame",
    "list_cameras",
    "open_sink",
    "open_source",
    "register_sink",
    "restore_frame",
    "round_size",
]
