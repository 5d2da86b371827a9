"""GPU texture-sharing outputs: Spout (Windows, ``SpoutGL``) and Syphon (macOS, ``syphon-python``).

Offered only where their packages are installed (engine/io/availability.py says which); both are optional and
installed by the user (``pip install SpoutGL`` / ``pip install syphon-python``). OBS receives Spout with the
obs-spout2 plugin ("Spout2 Capture") and Syphon with its built-in "Syphon Client" source. Frames are uploaded from
the CPU (RGBA), so the benefit over the MPEG-TS stream is latency and quality, not GPU memory traffic.

UNVERIFIED: written against the packages' published examples (SpoutGL ``SpoutSender.sendImage``; syphon-python
``SyphonMetalServer.publish_frame_texture``); no Windows or macOS machine was available to run them.

Specs: ``spout`` / ``spout:NAME`` and ``syphon`` / ``syphon:NAME`` (default name ``StreamDiffusionV2``).
"""

from __future__ import annotations

import importlib
from abc import abstractmethod

import numpy as np
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.availability import TEXSHARE_MODULES, texshare_availability
from sdv2_studio.engine.io.frames import check_frame, fit_frame
from sdv2_studio.engine.io.protocols import Frame, FrameSink

__all__ = ["SpoutSink", "SyphonSink", "open_texshare_sink"]

DEFAULT_NAME = "StreamDiffusionV2"


def _rgba(frame: Frame, size: tuple[int, int] | None) -> np.ndarray:
    check_frame(frame)
    if size is not None and frame.shape[:2] != size:
        frame = fit_frame(frame, size)
    out = np.empty((*frame.shape[:2], 4), np.uint8)
    out[..., :3] = frame
    out[..., 3] = 255
    return out


class _TextureSink(FrameSink):
    """What Spout and Syphon share: the platform and package checks, RGBA frames, a closed output refusing frames."""

    kind = ""  # "spout" or "syphon"

    def __init__(self, name: str, size: tuple[int, int] | None) -> None:
        available = texshare_availability(self.kind)
        if not available.ok:
            raise EngineError(available.describe())
        try:
            self._package = importlib.import_module(TEXSHARE_MODULES[self.kind])
        except ImportError as e:
            raise EngineError(f"{available.detail}, but it does not import ({e})") from None
        self.name, self.size = name, size
        self._closed = False

    def write(self, frame: Frame, pts_seconds: float | None = None) -> None:
        if self._closed:
            raise EngineError(f"the {self.kind.title()} output is closed; open it again")
        self._publish(_rgba(frame, self.size))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    @abstractmethod
    def _publish(self, rgba: np.ndarray) -> None:
        """Hand one RGBA frame to the platform's sender."""

    @abstractmethod
    def _release(self) -> None:
        """Release the platform's sender."""


class SpoutSink(_TextureSink):
    """Publishes frames as the Spout sender ``name`` (Windows; needs ``SpoutGL``)."""

    kind = "spout"

    def __init__(self, name: str = DEFAULT_NAME, size: tuple[int, int] | None = None) -> None:
        super().__init__(name, size)
        from SpoutGL.enums import GL_RGBA

        self._gl_rgba = GL_RGBA
        self._sender = self._package.SpoutSender()
        self._sender.setSenderName(name)

    def _publish(self, rgba: np.ndarray) -> None:
        self.size = rgba.shape[:2]
        h, w = self.size
        if not self._sender.sendImage(rgba, w, h, self._gl_rgba, False, 0):
            raise EngineError(f"Spout could not publish {self.name!r} (no OpenGL/DirectX interop?); use the udp "
                              "stream output")
        self._sender.setFrameSync(self.name)

    def _release(self) -> None:
        self._sender.releaseSender()


class SyphonSink(_TextureSink):
    """Publishes frames as the Syphon server ``name`` (macOS 11+; needs ``syphon-python``, Metal backend)."""

    kind = "syphon"

    def __init__(self, name: str = DEFAULT_NAME, size: tuple[int, int] | None = None) -> None:
        super().__init__(name, size)
        from syphon.utils.numpy import copy_image_to_mtl_texture
        from syphon.utils.raw import create_mtl_texture

        self._copy, self._create = copy_image_to_mtl_texture, create_mtl_texture
        self._server = self._package.SyphonMetalServer(name)
        self._texture = None

    def _publish(self, rgba: np.ndarray) -> None:
        if self._texture is None:
            self.size = rgba.shape[:2]
            self._texture = self._create(self._server.device, self.size[1], self.size[0])
        self._copy(rgba, self._texture)
        self._server.publish_frame_texture(self._texture)

    def _release(self) -> None:
        self._server.stop()


def open_texshare_sink(spec: str, *, fps: float, size: tuple[int, int] | None = None) -> FrameSink:
    """The :func:`~engine.io.sinks.register_sink` opener for ``spout[:NAME]`` and ``syphon[:NAME]``."""
    kind, _, name = spec.strip().partition(":")
    cls = {"spout": SpoutSink, "syphon": SyphonSink}.get(kind.lower())
    if cls is None:
        raise EngineError(f"unsupported output {spec!r}: use spout[:NAME] or syphon[:NAME]")
    return cls(name or DEFAULT_NAME, size)
