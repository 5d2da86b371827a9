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
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_for
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io import ndi, sinks
from sdv2_studio.engine.io.availability import NDI_INSTALL, low_latency_outputs

try:
    import cyndilib
except ImportError:  # the [ndi] extra is not installed: the round trips skip, the rest runs
    cyndilib = None
RECEIVER = Path(__file__).resolve().parent / "ndi_receiver.py"
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


def receive(name: str, like: np.ndarray | None = None, timeout: float = 60.0) -> tuple[np.ndarray, Fraction]:
    """(frame as RGB, frame rate) of the first frame of the NDI source ``HOST (name)`` that is close to ``like`` (any
    frame when None), received by tests/ndi_receiver.py in its own process (why: its docstring), or fail."""
    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, str(RECEIVER), name, out, str(timeout)]
        if like is not None:
            np.save(Path(out) / "like.npy", like)
            argv.append(str(Path(out) / "like.npy"))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 60)
        assert done.returncode == 0, done.stderr.strip()
        return np.load(Path(out) / "frame.npy"), Fraction((Path(out) / "rate.txt").read_text())


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
        rgb, rate = receive(name, like=first)
        err = np.abs(rgb.astype(int) - first)
        print(f"\nNDI round trip 160x96: max error {err.max()}, mean {err.mean():.2f} (8-bit levels)")
        assert err.max() <= 24 and err.mean() < 4  # BGRX -> SpeedHQ 4:2:2 -> RGBX
        assert rate == Fraction(30)
        current[0] = second  # the stream is live: a new picture replaces the old one
        rgb, _ = receive(name, like=second)
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
        rgb, rate = receive(name, timeout=120)
        assert rgb.shape == (64, 96, 3)  # the styled frames at the source's size
        assert rate == Fraction(12)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
