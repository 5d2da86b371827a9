"""Live output sinks without OBS: the pyvirtualcam sink (through a registered test backend) and the MPEG-TS/UDP sink
received and decoded by PyAV. Their pacing is the session's (tests/test_session.py)."""

from __future__ import annotations

import sys
import threading
import time

import av
import av.video.frame
import numpy as np
import pytest
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.frames import fit_frame
from sdv2_studio.engine.io.mpegts import MpegTsSink, open_mpegts_sink, srt_available, stream_url
from sdv2_studio.engine.io.pattern import TestPatternSource, read_counter
from sdv2_studio.engine.io.vcam import VirtualCameraSink, open_vcam_sink, parse_vcam_spec
from sdv2_studio.obs_bridge.output import free_udp_port

pyvirtualcam = pytest.importorskip("pyvirtualcam", reason="pyvirtualcam is not installed (pip install pyvirtualcam)")


# -- virtual camera through pyvirtualcam's backend registry ----------------------------------------------------------


class FakeCamera:
    """A pyvirtualcam backend: records what pyvirtualcam hands a real driver."""

    instances: list[FakeCamera] = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw) -> None:
        if device == "/dev/missing":
            raise RuntimeError("device /dev/missing does not exist")
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or "/dev/video42"
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.closed = False
        FakeCamera.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())
        self.times.append(time.monotonic())

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return self._device

    def native_fourcc(self):
        return self.fourcc


@pytest.fixture
def fake_backend():
    pyvirtualcam.register_backend("sdv2-test", FakeCamera)
    FakeCamera.instances.clear()
    yield FakeCamera
    pyvirtualcam.camera.BACKENDS.pop("sdv2-test", None)


def test_vcam_sink_sends_rgb_frames_of_the_camera_size(fake_backend):
    sink = VirtualCameraSink(30, (48, 64), backend="sdv2-test")
    assert sink.backend == "sdv2-test" and sink.device == "/dev/video42"
    cam = fake_backend.instances[-1]
    assert (cam.width, cam.height, cam.fps) == (64, 48, 30)
    assert cam.fourcc == pyvirtualcam.util.encode_fourcc(pyvirtualcam.PixelFormat.RGB.value)
    src = TestPatternSource((90, 160), fps=30)  # 16:9 frames into a 4:3 camera: fitted, not stretched
    for i in range(5):
        sink.write(src.frame(i))
    sink.close()
    assert cam.closed and len(cam.frames) == 5
    got = cam.frames[3]
    assert got.dtype == np.uint8 and got.ndim == 1 and got.size == 48 * 64 * 3  # pyvirtualcam flattens
    np.testing.assert_array_equal(got.reshape(48, 64, 3), fit_frame(src.frame(3), (48, 64)))


def test_vcam_opener_parses_specs(fake_backend):
    assert parse_vcam_spec("vcam") == parse_vcam_spec("vcam:") == (None, None)
    assert parse_vcam_spec("vcam:/dev/video7") == (None, "/dev/video7")
    assert parse_vcam_spec("vcam/unitycapture:Unity Video Capture") == ("unitycapture", "Unity Video Capture")
    with pytest.raises(EngineError, match="bad virtual camera output"):
        parse_vcam_spec("vcamera")
    sink = open_vcam_sink("vcam/sdv2-test:/dev/video9", fps=30.0, size=(32, 32))
    assert sink.device == "/dev/video9" and sink.backend == "sdv2-test"
    for i in range(6):  # sent as written: a paced session spaces them (tests/test_session.py)
        sink.write(np.full((32, 32, 3), i, np.uint8))
    sink.close()
    cam = fake_backend.instances[-1]
    assert [int(f[0]) for f in cam.frames] == list(range(6)) and cam.closed


def test_vcam_errors_name_the_fix(fake_backend):
    with pytest.raises(EngineError, match="no virtual camera available .*does not exist"):
        VirtualCameraSink(30, (32, 32), backend="sdv2-test", device="/dev/missing")
    with pytest.raises(EngineError, match="unknown virtual camera backend 'nope'"):
        VirtualCameraSink(30, (32, 32), backend="nope")


# -- MPEG-TS over UDP --------------------------------------------------------------------------------------------------


def test_stream_urls_get_low_latency_options_and_bad_ones_are_refused():
    assert stream_url("udp://127.0.0.1:9000") == "udp://127.0.0.1:9000?pkt_size=1316"
    assert "mode=caller" in stream_url("srt://127.0.0.1:9000") and "transtype=live" in stream_url("srt://h:1")
    with pytest.raises(EngineError, match="use udp://HOST:PORT"):
        stream_url("rtmp://127.0.0.1/live")
    with pytest.raises(EngineError, match="needs a host and a port"):
        stream_url("udp://127.0.0.1")
    if not srt_available():
        with pytest.raises(EngineError, match="no SRT support: use a udp:// output"):
            MpegTsSink("srt://127.0.0.1:9000", 30)


def test_mpegts_over_udp_decodes_to_our_frames_without_b_frames():
    port = free_udp_port()
    size, fps, n = (128, 192), 30, 75
    src = TestPatternSource(size, fps=fps)
    received: list[tuple[np.ndarray, str, bool]] = []

    def receive() -> None:
        try:
            with av.open(f"udp://127.0.0.1:{port}?overrun_nonfatal=1", format="mpegts", timeout=3,
                         options={"fflags": "nobuffer", "analyzeduration": "500000"}) as box:
                box.streams.video[0].thread_type = "SLICE"  # frame threads would hold back the last frames
                for frame in box.decode(video=0):
                    rgb = frame.to_ndarray(format="rgb24")
                    received.append((rgb, av.video.frame.PictureType(frame.pict_type).name, frame.key_frame))
                    if read_counter(rgb) >= n - 2:  # MPEG-TS demuxers may hold the very last frame until EOF
                        return
        except av.error.ExitError:  # timed out waiting for more
            pass

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    time.sleep(0.3)  # the receiver binds the port while opening
    sink = open_mpegts_sink(f"udp://127.0.0.1:{port}", fps=fps)
    for i in range(n):
        sink.write(src.frame(i))
        time.sleep(1 / fps)
    time.sleep(0.5)
    sink.close()
    rx.join(5)
    assert len(received) > n // 2, "the stream did not arrive"
    counters = [read_counter(f) for f, _, _ in received]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)  # in order, no repeats
    assert all(kind != "B" for _, kind, _ in received)
    keys = [c for (_, _, key), c in zip(received, counters) if key]
    assert all(k % fps == 0 for k in keys)  # a keyframe every second, so receivers join within a second
    f, _, _ = received[len(received) // 2]
    err = np.abs(f.astype(int) - src.frame(read_counter(f)).astype(int)).mean()
    assert err < 8


# -- Spout / Syphon (their packages exist on Windows/macOS only) ------------------------------------------------------


def test_texture_sharing_outputs_are_refused_clearly_where_unavailable(monkeypatch):
    from sdv2_studio.engine.io import texshare
    from sdv2_studio.engine.io.availability import low_latency_outputs

    if sys.platform.startswith("linux"):
        found = low_latency_outputs()
        assert not found["spout"].ok and found["spout"].describe() == ("Spout exists on Windows only: use NDI or "
                                                                        "the OBS plugin here")
        assert not found["syphon"].ok and "macOS only" in found["syphon"].detail
        with pytest.raises(EngineError, match="Spout exists on Windows only"):
            texshare.open_texshare_sink("spout", fps=30)
        with pytest.raises(EngineError, match="Syphon exists on macOS only"):
            texshare.open_texshare_sink("syphon:Mine", fps=30)
    with pytest.raises(EngineError, match="use spout"):
        texshare.open_texshare_sink("ndi", fps=30)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "SpoutGL", None)  # not installed
    spout = low_latency_outputs()["spout"]
    assert not spout.ok and spout.fix.startswith("pip install SpoutGL")
    with pytest.raises(EngineError, match="pip install SpoutGL"):
        texshare.SpoutSink()


def test_spout_sink_hands_spoutgl_rgba_frames(monkeypatch):
    """Checks our side of the SpoutGL contract (sendImage(buffer, w, h, GL_RGBA, invert, fbo), setFrameSync) with a
    stand-in module; the real SpoutGL is Windows-only and unverified here."""
    import types

    from sdv2_studio.engine.io import texshare

    calls = []

    class Sender:
        def setSenderName(self, name):
            calls.append(("name", name))

        def sendImage(self, buf, w, h, fmt, invert, fbo):
            calls.append(("send", np.asarray(buf).copy(), w, h, fmt, invert, fbo))
            return True

        def setFrameSync(self, name):
            calls.append(("sync", name))

        def releaseSender(self):
            calls.append(("release",))

    module = types.ModuleType("SpoutGL")
    module.SpoutSender = Sender
    enums = types.ModuleType("SpoutGL.enums")
    enums.GL_RGBA = 0x1908
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "SpoutGL", module)
    monkeypatch.setitem(sys.modules, "SpoutGL.enums", enums)
    sink = texshare.SpoutSink("Studio", size=(32, 48))
    frame = TestPatternSource((64, 64)).frame(3)
    sink.write(frame)
    sink.close()
    assert calls[0] == ("name", "Studio") and calls[-2] == ("sync", "Studio") and calls[-1] == ("release",)
    _, buf, w, h, fmt, invert, fbo = calls[1]
    assert (w, h, fmt, invert, fbo) == (48, 32, 0x1908, False, 0)
    assert buf.shape == (32, 48, 4) and (buf[..., 3] == 255).all()
    np.testing.assert_array_equal(buf[..., :3], fit_frame(frame, (32, 48)))
