"""NDI output (engine/io/ndi.py): spec parsing, the pixel conversion, the one-line error without cyndilib, a sink
that never waits for the network, and real round trips through the NDI runtime cyndilib bundles: frames sent by the
sink (and by `sdv2 run --out ndi:NAME`) are found by name and received by a cyndilib Receiver in this process.
NDI stays on loopback here (tests/conftest.py points NDI_CONFIG_DIR at tests/ndi/). Without multicast, discovery on
loopback lists the senders of one process at a time (the one holding NDI's discovery port), so each test closes its
senders and no other NDI program may run meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from fractions import Fraction

import numpy as np
import pytest
from helpers import wait_for
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io import ndi, sinks
from sdv2_studio.engine.io.availability import NDI_INSTALL, low_latency_outputs

try:
    import cyndilib
    from cyndilib.receiver import ReceiveFrameType
except ImportError:  # the [ndi] extra is not installed: the round trips skip, the rest runs
    cyndilib = None
needs_ndi = pytest.mark.skipif(cyndilib is None, reason=f"cyndilib is not installed ({NDI_INSTALL})")


def gradient(h: int, w: int, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = xx * 255 // (w - 1)
    img[..., 1] = yy * 255 // (h - 1)
    img[..., 2] = (40 + 80 * seed) % 256
    return img


def test_specs_name_the_sender_and_route_to_the_ndi_sink():
    assert ndi.parse_ndi_spec("ndi") == ndi.parse_ndi_spec("ndi:") == "StreamDiffusionV2"
    assert ndi.parse_ndi_spec("NDI:Studio cam 2") == "Studio cam 2"
    for bad in ("ndi:bad(name)", "ndi:" + "x" * 64, "ndi:a\tb", "ndix"):
        with pytest.raises(EngineError, match="ndi"):
            ndi.parse_ndi_spec(bad)
    assert sinks._opener("ndi:Studio") is sinks._opener("ndi") is not None
    assert not sinks.is_file_spec("ndi") and not sinks.is_file_spec("ndi:Studio")
    assert sinks.is_file_spec("ndi.mp4") and sinks.is_file_spec("out/ndi/styled.mp4")


def test_rgb_frames_become_bgrx():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    bgrx = ndi.rgb_to_bgrx(rgb)
    assert bgrx.shape == (5, 7, 4) and bgrx.dtype == np.uint8
    assert np.array_equal(bgrx[..., 0], rgb[..., 2]) and np.array_equal(bgrx[..., 1], rgb[..., 1])
    assert np.array_equal(bgrx[..., 2], rgb[..., 0]) and (bgrx[..., 3] == 255).all()


def test_without_cyndilib_it_is_one_line_naming_the_extra_before_the_model_loads(monkeypatch):
    monkeypatch.setitem(sys.modules, "cyndilib", None)  # as if not installed
    with pytest.raises(EngineError, match=r"pip install 'streamdiffusion-studio\[ndi\]'"):
        sinks.open_sink("ndi", fps=30)
    assert low_latency_outputs()["ndi"] == low_latency_outputs()["ndi"].__class__(
        False, "NDI output needs cyndilib (its wheel brings the NDI runtime)", NDI_INSTALL)
    blocked = ("import sys; sys.modules['cyndilib'] = None; from sdv2_studio.engine.cli import main; "
               "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", blocked, "run", "--model", "tiny", "--out", "ndi"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == ["sdv2: error: NDI output needs cyndilib (its wheel brings the NDI runtime): pip install "
                     "'streamdiffusion-studio[ndi]'"]  # and no model loading before it


def test_project_extra_is_named_ndi():
    from pathlib import Path

    import tomllib

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "streamdiffusion-studio"
    assert any(dep.startswith("cyndilib") for dep in meta["project"]["optional-dependencies"]["ndi"])
    assert not any(dep.startswith("cyndilib") for dep in meta["project"]["dependencies"])


# -- with the NDI runtime ---------------------------------------------------------------------------------------------


def receive(name: str, want, timeout: float = 60.0):
    """Find the NDI source ``HOST (name)`` and return (frame as RGB, frame rate) of the first received frame for which
    ``want(rgb)`` holds, or fail."""
    finder = cyndilib.Finder()
    finder.open()
    try:
        found: list[str] = []

        def listed() -> bool:
            finder.wait_for_sources(0.5)
            found[:] = [n for n in finder.get_source_names() if n.endswith(f"({name})")]
            return bool(found)

        assert wait_for(listed, timeout), f"no NDI source named {name!r}; seen: {finder.get_source_names()}"
        receiver = cyndilib.Receiver(color_format=cyndilib.RecvColorFormat.RGBX_RGBA,
                                     bandwidth=cyndilib.RecvBandwidth.highest)
        video = cyndilib.VideoRecvFrame()
        receiver.set_video_frame(video)
        receiver.connect_to(finder.get_source(found[0]))
        got = []

        def received() -> bool:
            kind = receiver.receive(ReceiveFrameType.recv_video, 200)
            if not kind & ReceiveFrameType.recv_video:
                return False
            w, h = video.get_resolution()
            data = np.empty(video.get_data_size(), np.uint8)
            video.fill_p_data(data)
            rgb = data.reshape(h, video.get_line_stride() // 4, 4)[:, :w, :3].copy()
            if want(rgb):
                got.append((rgb, video.get_frame_rate()))
            return bool(got)

        try:
            assert wait_for(received, timeout, poll=0), f"no wanted frame from {found[0]!r} within {timeout} s"
        finally:
            receiver.disconnect()
        return got[0]
    finally:
        finder.close()


@needs_ndi
def test_frames_sent_by_the_sink_arrive_through_ndi_with_their_pixels_and_rate():
    assert low_latency_outputs()["ndi"].ok
    name = f"sdv2-test-{os.getpid()}"
    first, second = gradient(96, 160, 0), gradient(96, 160, 1)
    sink = sinks.open_sink(f"ndi:{name}", fps=30)
    stop = threading.Event()
    current = [first]

    def keep_sending():  # a live output: frames keep coming while the receiver connects
        while not stop.is_set():
            sink.write(current[0])
            stop.wait(1 / 30)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        def close_to(ref):
            return lambda rgb: rgb.shape == ref.shape and np.abs(rgb.astype(int) - ref).mean() < 4

        rgb, rate = receive(name, close_to(first))
        err = np.abs(rgb.astype(int) - first)
        print(f"\nNDI round trip 160x96: max error {err.max()}, mean {err.mean():.2f} (8-bit levels)")
        assert err.max() <= 24 and err.mean() < 4  # BGRX -> SpeedHQ 4:2:2 -> RGBX
        assert rate == Fraction(30)
        current[0] = second  # the stream is live: a new picture replaces the old one
        rgb, _ = receive(name, close_to(second))
        assert np.abs(rgb.astype(int) - second).mean() < 4
    finally:
        stop.set()
        sender.join()
        sink.close()
    assert sink.frames > 0
    with pytest.raises(EngineError, match="closed"):
        sink.write(first)


class _StalledSender:
    """Wraps the real cyndilib sender; its sends wait until released (a network that does not drain)."""

    def __init__(self, real):
        self.real, self.release, self.calls = real, threading.Event(), 0

    def write_video_async(self, data):
        self.calls += 1
        self.release.wait()
        return self.real.write_video_async(data)

    def close(self):
        self.real.close()


@needs_ndi
def test_a_stalled_network_never_blocks_writes_frames_are_dropped_instead():
    sink = ndi.NdiSink(f"sdv2-stall-{os.getpid()}", fps=30, size=(32, 48))
    frame = gradient(32, 48)
    sink.write(frame)
    assert wait_for(lambda: sink.frames == 1, 30)
    stalled = sink._sender = _StalledSender(sink._sender)
    try:
        for _ in range(50):  # each returns at once although the sender thread is stuck
            sink.write(frame)
        assert wait_for(lambda: stalled.calls == 1, 30)
        assert sink.dropped >= 48  # all but the frame in flight and the newest
    finally:
        stalled.release.set()
    sink.close()
    assert sink.frames + sink.dropped == 51


@needs_ndi
def test_sdv2_run_out_ndi_streams_the_styled_video(tmp_path):
    name = f"sdv2-cli-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "sdv2_studio.engine.cli", "run", "--model", "tiny", "--size",
                             "64x64", "--source", "test:96x64@12", "--realtime", "--seconds", "600", "--out",
                             f"ndi:{name}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rgb, rate = receive(name, lambda rgb: True, timeout=120)
        assert rgb.shape == (64, 96, 3)  # the styled frames at the source's size
        assert rate == Fraction(12)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
