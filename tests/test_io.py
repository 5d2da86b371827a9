"""engine.io: frame geometry, the test pattern, PyAV sources/sinks, spec parsing and error messages."""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io import (
    AVSource,
    CallbackSink,
    MP4Sink,
    TestPatternSource,
    check_size,
    fit_frame,
    open_sink,
    open_source,
    restore_frame,
    round_size,
)
from sdv2_studio.engine.io import sinks as sinks_module
from sdv2_studio.engine.io.cameras import camera_url, parse_avfoundation_devices, parse_dshow_devices
from sdv2_studio.engine.io.frames import crop_box
from sdv2_studio.engine.io.pacing import LatestOnly
from sdv2_studio.engine.io.pattern import read_counter
from sdv2_studio.engine.io.sinks import default_codec

CODECS = ["libx264", "mpeg4"] if default_codec() == "libx264" else ["mpeg4"]


# ---------------------------------------------------------------- frame geometry


def _marker_frame(h: int, w: int, side: int) -> np.ndarray:
    """Black frame with a centred white square."""
    frame = np.zeros((h, w, 3), np.uint8)
    top, left = (h - side) // 2, (w - side) // 2
    frame[top : top + side, left : left + side] = 255
    return frame


def _marker_box(frame: np.ndarray) -> tuple[float, float, int, int]:
    """(centre y, centre x, height, width) of the bright region."""
    ys, xs = np.nonzero(frame.mean(axis=2) > 128)
    return (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2, ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


@pytest.mark.parametrize(
    "src, dst",
    [((720, 1280), (512, 512)), ((1280, 720), (512, 512)), ((600, 600), (288, 512)), ((480, 640), (512, 320))],
    ids=["landscape", "portrait", "square-to-wide", "to-portrait"],
)
def test_fit_and_restore_preserve_aspect_and_centre(src, dst):
    frame = _marker_frame(*src, side=200)
    fitted = fit_frame(frame, dst)
    assert fitted.shape == (*dst, 3) and fitted.dtype == np.uint8
    cy, cx, mh, mw = _marker_box(fitted)
    assert abs(cy - (dst[0] - 1) / 2) <= 1 and abs(cx - (dst[1] - 1) / 2) <= 1  # still centred
    assert abs(mh - mw) <= 2  # still square
    _, _, ch, cw = crop_box(*src, *dst)
    assert abs(mh - 200 * dst[0] / ch) <= 2  # scaled by the cover factor

    back = restore_frame(fitted, frame.shape, border="black")  # "blur" would smear the marker into the borders
    assert back.shape == frame.shape
    cy, cx, mh, mw = _marker_box(back)
    assert abs(cy - (src[0] - 1) / 2) <= 1.5 and abs(cx - (src[1] - 1) / 2) <= 1.5
    assert abs(mh - 200) <= 3 and abs(mw - 200) <= 3  # back at its original size and place


def test_restore_fills_borders():
    styled = np.full((512, 512, 3), 200, np.uint8)
    blur = restore_frame(styled, (720, 1280))
    black = restore_frame(styled, (720, 1280, 3), border="black")
    assert blur.shape == black.shape == (720, 1280, 3)
    assert black[:, :100].max() == 0 and black[:, 640].min() == 200
    assert blur[:, :100].min() > 100  # blurred (dimmed) copy, not black
    assert np.array_equal(blur[:, 280:1000], black[:, 280:1000])


def test_fit_frame_identity_and_validation():
    frame = np.zeros((64, 96, 3), np.uint8)
    assert fit_frame(frame, (64, 96)) is frame
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        fit_frame(np.zeros((64, 96), np.uint8), (64, 64))
    flipped = TestPatternSource((96, 128)).frame(3)[::-1]  # negative strides, read-only views work too
    assert fit_frame(flipped, (64, 64)).shape == (64, 64, 3)


def test_round_and_check_size():
    assert round_size(720, 1280) == (720, 1280)
    assert round_size(500, 300) == (496, 304)
    assert check_size(512, 512) == (512, 512)
    with pytest.raises(EngineError, match="not a multiple of 16.*use 304x496"):
        check_size(500, 300)
    with pytest.raises(EngineError, match="too small"):
        check_size(48, 512)
    with pytest.raises(EngineError, match="too small"):
        round_size(40, 512)


# ---------------------------------------------------------------- test pattern


def test_pattern_is_deterministic_and_moves():
    a = [f for f, _ in TestPatternSource((128, 160), fps=16, frames=12)]
    b = [f for f, _ in TestPatternSource((128, 160), fps=16, frames=12)]
    other = TestPatternSource((128, 160), fps=16, seed=1).frame(0)
    assert len(a) == 12 and all(f.shape == (128, 160, 3) and f.dtype == np.uint8 for f in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # same seed, same frames
    assert not np.array_equal(a[0], other)  # another seed, another pattern
    for prev, cur in zip(a, a[1:]):
        assert np.abs(prev.astype(int) - cur.astype(int)).mean() > 1  # visible motion every frame
    assert [read_counter(f) for f in a] == list(range(12))


def test_pattern_length_timestamps_and_speed():
    src = TestPatternSource((64, 64), fps=8, seconds=1.5)
    assert [p for _, p in src] == [i / 8 for i in range(12)]
    with pytest.raises(EngineError):
        TestPatternSource((8, 8))


def test_pattern_realtime_pacing():
    start = time.perf_counter()
    frames = list(TestPatternSource((32, 32), fps=50, frames=11, realtime=True))
    assert len(frames) == 11 and 0.17 < time.perf_counter() - start < 10.0  # 10 intervals of 20 ms (never early)


# ---------------------------------------------------------------- mp4 sink and file source


def _write(path: Path, frames: list[np.ndarray], fps: float = 16, **kw) -> None:
    with MP4Sink(path, fps, **kw) as sink:
        for f in frames:
            sink.write(f)


@pytest.mark.parametrize("codec", CODECS)
def test_mp4_round_trip(tmp_path, codec):
    frames = [f for f, _ in TestPatternSource((144, 256), fps=16, frames=24)]
    path = tmp_path / "out.mp4"
    _write(path, frames, codec=codec)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == ("h264" if codec == "libx264" else "mpeg4")
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    assert len(decoded) == 24 and decoded[0].shape == (144, 256, 3)
    mae = np.mean([np.abs(d.astype(int) - f.astype(int)).mean() for d, f in zip(decoded, frames)]) / 255
    assert mae < 12 / 255, mae
    assert [read_counter(d) for d in decoded] == list(range(24))  # right frames, right order


def test_av_source_reads_file_and_loops(tmp_path):
    path = tmp_path / "clip.mp4"
    _write(path, [f for f, _ in TestPatternSource((96, 128), fps=16, frames=10)])
    with AVSource(path) as src:
        assert src.size == (96, 128) and src.fps == 16 and src.kind == "file"
        got = list(src)
    assert [read_counter(f) for f, _ in got] == list(range(10))
    assert np.allclose([p for _, p in got], np.arange(10) / 16)

    with AVSource(path, loop=True) as src:
        it = iter(src)
        got = [next(it) for _ in range(25)]
    assert [read_counter(f) for f, _ in got] == [i % 10 for i in range(25)]
    pts = [p for _, p in got]
    assert np.allclose(np.diff(pts), 1 / 16)  # timestamps keep increasing across loops

    with open_source(str(path)) as src:  # a plain path through the spec parser
        assert isinstance(src, AVSource) and len(list(src)) == 10

    src = AVSource(path)
    it = iter(src)
    next(it)
    src.close()  # closing while the consumer holds a frame ends the iteration cleanly
    assert list(it) == []
    with pytest.raises(EngineError, match="is closed"):
        iter(src)


def test_mp4_sink_is_atomic_and_handles_sizes(tmp_path):
    path = tmp_path / "rec.mp4"
    path.write_bytes(b"previous recording")
    sink = MP4Sink(path, 10)
    sink.write(np.full((101, 151, 3), 90, np.uint8))  # odd size: cropped to even
    sink.write(np.full((101, 151, 3), 90, np.uint8), pts_seconds=0.0)  # non-increasing pts is nudged
    assert path.read_bytes() == b"previous recording"  # untouched until close
    assert len(list(tmp_path.glob(".rec.mp4.*.part"))) == 1
    sink.close()
    sink.close()  # idempotent
    assert list(tmp_path.glob("*.part")) == []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert (s.height, s.width) == (100, 150) and len(list(c.decode(s))) == 2

    with pytest.raises(KeyboardInterrupt), MP4Sink(tmp_path / "stopped.mp4", 10, size=(64, 96)) as sink:
        sink.write(np.zeros((720, 1280, 3), np.uint8))  # other sizes are fitted to the fixed size
        raise KeyboardInterrupt  # a user stop still leaves a finished, playable file
    with AVSource(tmp_path / "stopped.mp4") as src:
        assert src.size == (64, 96) and len(list(src)) == 1

    MP4Sink(tmp_path / "empty.mp4", 10).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.mp4", "stopped.mp4"]  # no frames, no file


# ---------------------------------------------------------------- errors and spec parsing


def test_source_errors_are_one_line(tmp_path):
    with pytest.raises(EngineError, match="video file not found: .*missing.mp4; check the path"):
        AVSource(tmp_path / "missing.mp4")
    with pytest.raises(EngineError, match="no such video file"):
        open_source(str(tmp_path / "missing.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(EngineError, match="cannot read .*bad.mp4.*convert it"):
        open_source(str(bad))
    for spec in ["test:abc", "test:512x", "ftp2://host/x", ""]:
        with pytest.raises(EngineError) as info:
            open_source(spec)
        assert "\n" not in str(info.value) and ("use" in str(info.value))


class _DyingContainer:
    """Stands in for a PyAV container whose device vanishes after a few frames."""

    def __init__(self, real, n: int, error: BaseException | None) -> None:
        self.real, self.n, self.error = real, n, error

    def decode(self, stream):
        for i, frame in enumerate(self.real.decode(stream)):
            if i == self.n:
                if self.error is not None:
                    raise self.error
                return
            yield frame

    def close(self) -> None:
        self.real.close()


@pytest.mark.parametrize("error", [OSError(19, "No such device"), None], ids=["read-error", "eof"])
def test_camera_disappearing_mid_stream(tmp_path, error):
    path = tmp_path / "cam.mp4"
    _write(path, [f for f, _ in TestPatternSource((64, 64), fps=16, frames=6)])
    src = AVSource(path, drop_stale=False, label="camera /dev/video0")
    src.kind = "camera"  # as camera_source would open it, without a device
    src._container = _DyingContainer(src._container, 3, error)
    it = iter(src)
    assert len([next(it) for _ in range(3)]) == 3
    with pytest.raises(EngineError, match=r"^camera /dev/video0 disappeared: reconnect it or pick another source$"):
        next(it)
    src.close()


def test_open_source_specs():
    src = open_source("test")
    assert isinstance(src, TestPatternSource) and src.size == (512, 512) and src.fps == 16
    src = open_source("test:320x192@24")
    assert src.size == (192, 320) and src.fps == 24
    assert open_source("TEST@8").fps == 8
    with pytest.raises(EngineError, match="cannot open camera /dev/video97"):
        open_source("/dev/video97")
    with pytest.raises(EngineError, match="cannot open camera /dev/video98"):
        open_source("camera:98")
    with pytest.raises(EngineError, match="camera name is empty"):
        open_source("camera:")


def test_camera_urls_per_platform():
    assert camera_url("0", platform="linux") == ("/dev/video0", "v4l2", {})
    assert camera_url("/dev/video2", size=(720, 1280), fps=30, platform="linux") == (
        "/dev/video2",
        "v4l2",
        {"video_size": "1280x720", "framerate": "30"},
    )
    url, fmt, opts = camera_url("Integrated Camera", platform="win32")
    assert (url, fmt) == ("video=Integrated Camera", "dshow")
    url, fmt, opts = camera_url("0", platform="darwin")
    assert (url, fmt, opts["framerate"]) == ("0:none", "avfoundation", "30")


def test_device_list_parsers():
    dshow_new = [
        '"Integrated Camera" (video)',
        '  Alternative name "@device_pnp_\\\\?\\usb#vid"',
        '"OBS Virtual Camera" (video)',
        '"Microphone (Realtek Audio)" (audio)',
    ]
    assert [c.name for c in parse_dshow_devices(dshow_new)] == ["Integrated Camera", "OBS Virtual Camera"]
    dshow_old = [
        "DirectShow video devices (some may be both video and audio devices)",
        ' "USB Cam"',
        "DirectShow audio devices",
        ' "Mic"',
    ]
    assert [c.spec for c in parse_dshow_devices(dshow_old)] == ["USB Cam"]
    avf = [
        "AVFoundation video devices:",
        "[0] FaceTime HD Camera",
        "[1] Capture screen 0",
        "AVFoundation audio devices:",
        "[0] Built-in Microphone",
    ]
    assert [(c.spec, c.name) for c in parse_avfoundation_devices(avf)] == [("0", "FaceTime HD Camera")]


# ---------------------------------------------------------------- sinks, extension point, pacing


def test_callback_sink_and_open_sink(tmp_path, monkeypatch):
    got, closed = [], []
    with CallbackSink(lambda f, p: got.append((f.shape, p)), on_close=lambda: closed.append(1)) as sink:
        sink.write(np.zeros((4, 4, 3), np.uint8), 0.5)
    assert got == [((4, 4, 3), 0.5)] and closed == [1]

    assert isinstance(open_sink(str(tmp_path / "a.mp4"), fps=16), MP4Sink)
    with pytest.raises(EngineError, match="unsupported output 'ftp://x:1': use a .mp4 file path"):
        open_sink("ftp://x:1", fps=16)
    monkeypatch.setattr(sinks_module, "_OPENERS", [])
    sinks_module.register_sink("udp://", lambda spec, fps, size: CallbackSink(lambda f, p: None))
    assert isinstance(open_sink("UDP://x:1", fps=16), CallbackSink)
    with pytest.raises(EngineError, match=r"use a .mp4 file path, udp://\.\.\."):
        open_sink("srt://x:1", fps=16)


def test_latest_only_drops_stale_items_and_forwards_errors():
    def produce(n, fail=False):
        for i in range(n):
            time.sleep(0.004)
            yield i
        if fail:
            raise EngineError("camera gone")

    latest = LatestOnly(produce(40))
    got = []
    for item in latest:
        got.append(item)
        time.sleep(0.02)  # a slow consumer
    assert got == sorted(got) and got[-1] == 39 and latest.dropped > 0
    assert len(got) + latest.dropped == 40

    with pytest.raises(EngineError, match="camera gone"):
        for _ in LatestOnly(produce(3, fail=True)):
            pass

    started = threading.Event()

    def endless():
        while True:
            started.set()
            time.sleep(0.005)
            yield 1

    latest = LatestOnly(endless())
    started.wait(1)
    latest.close(timeout=1)
    assert not latest._thread.is_alive()


def test_av_source_latest_frame_reader(tmp_path):
    path = tmp_path / "live.mp4"
    _write(path, [f for f, _ in TestPatternSource((64, 64), fps=50, frames=30)], fps=50)
    src = AVSource(path, realtime=True, drop_stale=True)  # a file played like a live 50 fps input
    got = []
    for frame, _ in src:
        got.append(read_counter(frame))
        time.sleep(0.05)  # the "model" takes 50 ms per frame: 2.5 input frames
    assert got == sorted(got) and got[-1] == 29 and src.dropped > 0
    assert len(got) + src.dropped == 30
    src.close()
    assert src._container is None  # the reader thread released the file


# ---------------------------------------------------------------- time is data: presentation times survive a run


def write_timed(path: Path, pts: list[int], time_base: Fraction, fmt: str, size: tuple[int, int] = (64, 64)) -> None:
    """A clip whose frames sit at ``pts`` (in ``time_base``): gaps are slots the container repeats (AVI writes
    "repeat the previous frame" entries for them, as old captures and variable-frame-rate phone videos have)."""
    frames = TestPatternSource(size, fps=30, frames=len(pts))
    with av.open(str(path), "w", format=fmt) as c:
        stream = c.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30000)  # exact for all of them; mpeg4 allows at most 1/65535
        stream.time_base = time_base  # the container's (mp4 may pick its own)
        for p, (array, _) in zip(pts, frames):
            vf = av.VideoFrame.from_ndarray(array, format="rgb24")
            vf.pts, vf.time_base = p, time_base
            c.mux(stream.encode(vf))
        c.mux(stream.encode(None))


def read_times(path: Path) -> tuple[list[float], float]:
    """Every frame's presentation time (seconds from the first) and the container's duration."""
    with av.open(str(path)) as c:
        times = [f.time for f in c.decode(video=0)]
        return [t - times[0] for t in times], c.duration / 1e6


def gapped_pts(n: int = 30, slots: int = 300, seed: int = 12) -> list[int]:
    """``n`` frames spread irregularly over ``slots`` frame slots, starting at 0 and ending in the last slot."""
    import random

    return [0, *sorted(random.Random(seed).sample(range(1, slots - 1), n - 2)), slots - 1]


@pytest.mark.parametrize("fmt, time_base", [("avi", Fraction(1001, 30000)), ("mpegts", Fraction(1, 90000)),
                                            ("mp4", Fraction(1, 90000)), ("avi", Fraction(1, 30))],
                         ids=["ntsc-1001/30000", "mpegts-1/90000", "mp4-1/90000", "avi-1/30"])
def test_odd_time_bases_keep_every_frames_time_through_source_and_sink(tmp_path, fmt, time_base):
    ticks = 3003 if time_base == Fraction(1, 90000) else 1  # one NTSC frame in 1/90000
    pts = [p * ticks for p in gapped_pts(12, 60)]
    clip = tmp_path / f"in.{fmt}"
    write_timed(clip, pts, time_base, fmt)
    expected = [float((p - pts[0]) * time_base) for p in pts]
    with AVSource(clip) as src:
        got = list(src)
    assert [read_counter(f) for f, _ in got] == list(range(12))  # every coded frame, in order
    assert np.allclose([t for _, t in got], expected, atol=1e-6)  # at its own time, not at index / fps
    out = tmp_path / "out.mp4"
    with MP4Sink(out, fps=30) as sink:
        for frame, t in got:
            sink.write(frame, t)
    times, _ = read_times(out)
    assert np.allclose(times, expected, atol=1 / 60000)  # the sink's time base: exact to a tick


def test_presentation_clock_repairs_missing_and_backward_timestamps():
    from sdv2_studio.engine.io.sources import PresentationClock

    clock = PresentationClock(0.1)
    assert [clock.time(t) for t in (5.0, 5.5, None, 6.0)] == pytest.approx([0.0, 0.5, 0.6, 1.0])
    assert clock.time(2.0) == pytest.approx(1.1)  # a timestamp reset: one period on, not back in time
    assert clock.time(2.3) == pytest.approx(1.4)  # ... and the frames after it keep their spacing
    clock.restart()  # a looping file: the next pass starts one period after the last frame
    assert [clock.time(t) for t in (5.0, 5.5)] == pytest.approx([1.5, 2.0])


def test_cli_file_run_keeps_the_inputs_duration_and_frame_times(tmp_path):
    """The issue's case: a clip whose container stores few coded frames for many slots (30 frames over 10 s at a
    1/30 time base) came out 10x too fast. Through the real CLI it keeps its duration and every frame's time."""
    import subprocess
    import sys

    clip = tmp_path / "gapped.avi"
    write_timed(clip, gapped_pts(30, 300), Fraction(1, 30), "avi")
    in_times, in_duration = read_times(clip)
    assert len(in_times) == 30 and in_duration == pytest.approx(10.0, abs=0.05)
    out = tmp_path / "styled.mp4"
    r = subprocess.run([sys.executable, "-m", "sdv2_studio.engine.cli", "run", "--model", "tiny", "--source", str(clip),
                        "--size", "64x64", "--steps", "1", "--out", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    out_times, out_duration = read_times(out)
    assert len(out_times) == 30
    assert np.allclose(out_times, in_times, atol=1 / 30)  # every styled frame at its input frame's time
    assert out_duration == pytest.approx(in_duration, abs=1 / 30)  # within one frame
