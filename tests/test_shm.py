"""The shared-memory frame protocol (obs_bridge/plugin/PROTOCOL.md) in Python alone: writer, reader, specs."""

from __future__ import annotations

import itertools
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io import shm
from sdv2_studio.engine.io.shm import ALIVE_NS, HEARTBEAT, ShmFrameReader, ShmFrameSink, ShmFrameSource, segment_name
from sdv2_studio.engine.io.sinks import open_sink
from sdv2_studio.engine.io.sources import open_source

_counter = itertools.count()


@pytest.fixture
def channel():
    """A channel name no other test (or test run) uses; its segments are removed afterwards."""
    name = f"t{os.getpid() % 100000}x{next(_counter)}"
    yield name
    for direction in ("cap", "sty"):
        leftover = shm._attach(segment_name(name, direction))
        if leftover is not None:
            leftover.close()
            shm._unlink(leftover)


def poll_until(reader: ShmFrameReader, timeout: float = 5.0):
    """The next frame the reader returns (readers re-open the name at most every 250 ms), or None on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = reader.poll()
        if got is not None:
            return got
        time.sleep(0.005)
    return None


def wait_state(reader: ShmFrameReader, state: str, timeout: float = 5.0) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        reader.poll()
        if reader.state == state:
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def pattern(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def start_writer(segment: str, body: str) -> subprocess.Popen:
    """A writer in another process: `body` runs with `sink` (slots=2) and `np` defined; it prints "ready" first."""
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from sdv2_studio.engine.io.shm import ShmFrameSink
        sink = ShmFrameSink({segment!r}, fps=30, slots=2)
        print("ready", flush=True)
    """) + textwrap.dedent(body)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_frames_arrive_exactly_and_readers_take_the_newest(channel):
    seg = segment_name(channel, "sty")
    reader = ShmFrameReader(seg)
    assert reader.poll() is None and reader.state == "absent"
    with ShmFrameSink(seg, fps=25) as sink:
        frames = [pattern(48, 64, i) for i in range(3)]
        for f in frames:
            sink.write(f)
        time.sleep(shm.REOPEN)  # the reader looked before the segment existed
        rgb, info = poll_until(reader)
        assert np.array_equal(rgb, frames[-1]) and info.frame == 3 and info.write_ns >= info.pts_ns > 0
        assert reader.skipped == 0 and reader.state == "alive"  # frames before the first read are not "skipped"
        assert reader.poll() is None  # nothing new
        assert reader.header.period_ns == 40_000_000 and reader.header.writer_pid == os.getpid()

        sink.write(frames[0])
        sink.write(frames[1])
        rgb, info = poll_until(reader)
        assert np.array_equal(rgb, frames[1]) and info.frame == 5 and reader.skipped == 1

        rgba = np.dstack([frames[2], np.full((48, 64), 7, np.uint8)])  # RGBA in (more bytes: a new segment)
        sink.write(rgba)
        assert np.array_equal(poll_until(reader)[0], frames[2])  # RGB out

        small = pattern(16, 24, 9)  # smaller frames reuse the segment
        sink.write(small)
        rgb, info = poll_until(reader)
        assert np.array_equal(rgb, small) and info.frame == 2

        big = pattern(96, 128, 10)  # a larger frame retires the segment; the reader finds its successor
        sink.write(big)
        rgb, info = poll_until(reader)
        assert np.array_equal(rgb, big) and info.frame == 1  # a new segment numbers afresh
    reader.poll()
    assert reader.state in ("gone", "absent")  # closed: seen at the next poll, not after the heartbeat timeout
    with pytest.raises(EngineError, match="is closed"):
        sink.write(big)


def test_fitting_to_a_fixed_size_and_rejecting_bad_frames(channel):
    seg = segment_name(channel, "sty")
    reader = ShmFrameReader(seg)
    with ShmFrameSink(seg, size=(32, 32)) as sink:
        sink.write(pattern(64, 128, 1))
        rgb, _ = poll_until(reader)
        assert rgb.shape == (32, 32, 3)
        with pytest.raises(ValueError, match="HxWx3 or HxWx4 uint8"):
            sink.write(np.zeros((8, 8, 3), np.float32))
    reader.close()


def test_version_and_magic_are_checked(channel):
    seg = segment_name(channel, "sty")
    raw = shm._map(seg, create=True, size=shm.HEADER_SIZE + 2 * 128)
    try:
        reader = ShmFrameReader(seg)
        assert reader.poll() is None and reader.state == "absent"  # all zero: a writer still setting it up
        now = shm.now_ns()
        header = [shm.MAGIC, 2, shm.HEADER_SIZE, 2, shm.SLOT_HEADER_SIZE, 128, 64, 0, 1, now, 0, now, 0]
        shm._HEADER.pack_into(raw.buf, 0, *header)
        reader = ShmFrameReader(seg)
        with pytest.raises(EngineError, match=r"speaks frame protocol v2, this engine v1: update the plugin"):
            reader.poll()
        header[:2] = [b"NOTOURS\0", 1]
        shm._HEADER.pack_into(raw.buf, 0, *header)
        with pytest.raises(EngineError, match="not a StreamDiffusionV2 frame channel"):
            ShmFrameReader(seg).poll()
        header[:2] = [shm.MAGIC, 1]
        header[5] = 1 << 20  # slots larger than the object
        shm._HEADER.pack_into(raw.buf, 0, *header)
        with pytest.raises(EngineError, match="inconsistent header"):
            ShmFrameReader(seg).poll()
    finally:
        raw.close()
        shm._unlink(raw)


def test_a_frame_being_written_is_never_returned(channel):
    seg = segment_name(channel, "sty")
    reader = ShmFrameReader(seg)
    with ShmFrameSink(seg) as sink:
        sink.write(pattern(8, 8, 0))
        time.sleep(shm.REOPEN)
        poll_until(reader)
        sink.write(pattern(8, 8, 1))
        buf = sink._shm.buf
        at = shm.HEADER_SIZE + (2 % sink.slots) * sink._stride
        lock = struct.unpack_from("<Q", buf, at)[0]
        struct.pack_into("<Q", buf, at, lock + 1)  # as if the writer were still copying frame 2
        assert reader.poll() is None and reader.races == 4  # every attempt saw the odd lock
        struct.pack_into("<Q", buf, at, lock)
        assert reader.poll()[1].frame == 2


def test_torn_frames_are_impossible_under_concurrent_writes(channel):
    """Another process rewrites a 2-slot ring with uniform 3 MB frames as fast as it can. Every frame the reader
    accepts is one whole frame (all pixels equal to its number mod 251); copies the writer overwrote meanwhile
    are detected (``races``) and thrown away."""
    seg = segment_name(channel, "cap")
    writer = start_writer(seg, """
        frame = np.empty((1024, 1024, 3), np.uint8)
        for n in range(1, 10**9):
            frame.fill(n % 251)
            sink.write(frame)
    """)
    reader = ShmFrameReader(seg)
    accepted = 0
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and (accepted < 50 or reader.races < 3):
            got = reader.poll()
            if got is None:
                continue
            rgb, info = got
            assert rgb.min() == rgb.max() == info.frame % 251, f"torn frame {info.frame}"
            accepted += 1
    finally:
        writer.kill()
        writer.wait()
    print(f"\n{accepted} whole frames accepted, {reader.races} racing copies discarded, {reader.skipped} skipped")
    assert accepted >= 50 and reader.races >= 3  # the writer really raced the reader, and never got through


def test_a_dead_writer_is_detected_and_its_successor_picked_up(channel):
    seg = segment_name(channel, "cap")
    writer = start_writer(seg, """
        sink.write(np.full((8, 8, 3), 1, np.uint8))
        print("wrote", flush=True)
        import time
        time.sleep(60)
    """)
    assert writer.stdout.readline().strip() == "wrote"
    reader = ShmFrameReader(seg)
    assert poll_until(reader)[0].max() == 1 and reader.state == "alive"
    writer.send_signal(signal.SIGKILL)  # a crash: no CLOSED flag, the segment stays behind
    writer.wait()
    gone = wait_state(reader, "gone", 5)
    assert gone is not None and reader.poll() is None
    print(f"\ndead writer noticed {gone:.2f} s after the kill")
    assert gone >= ALIVE_NS / 1e9 - HEARTBEAT  # through the heartbeat going stale (last beat <= 0.1 s before)

    with ShmFrameSink(seg) as successor:  # takes the dead writer's name over
        successor.write(np.full((8, 8, 3), 2, np.uint8))
        rgb, info = poll_until(reader)
        assert rgb.max() == 2 and info.frame == 1 and reader.state == "alive"
    reader.poll()
    assert reader.state in ("gone", "absent")  # a clean close is seen at once


def test_a_live_writer_is_never_displaced(channel):
    seg = segment_name(channel, "sty")
    with ShmFrameSink(seg) as first:
        first.write(pattern(8, 8, 0))
        second = ShmFrameSink(seg)
        with pytest.raises(EngineError, match=rf"already writes '{seg}'; stop it or pick another channel"):
            second.write(pattern(8, 8, 1))
        second.close()
        reader = ShmFrameReader(seg)
        assert poll_until(reader)[1].frame == 1  # the first writer's segment is untouched


def test_channels_specs_and_several_channels_side_by_side(channel):
    a, b = f"{channel}a", f"{channel}b"
    sink_a = open_sink(f"obs-source:{a}", fps=30)
    sink_b = open_sink(f"OBS-Source:{b}", fps=30)
    assert isinstance(sink_a, ShmFrameSink) and sink_a.segment == f"sdv2-{a}-sty" and sink_b.segment == f"sdv2-{b}-sty"
    assert open_sink("obs-source", fps=30).segment == "sdv2-main-sty"
    try:
        sink_a.write(np.full((16, 16, 3), 10, np.uint8))
        sink_b.write(np.full((24, 24, 3), 20, np.uint8))
        ra, rb = ShmFrameReader(sink_a.segment), ShmFrameReader(sink_b.segment)
        assert poll_until(ra)[0].max() == 10 and poll_until(rb)[0].shape == (24, 24, 3)
    finally:
        sink_a.close()
        sink_b.close()
    for bad in ("obs-source:has space", "obs-source:" + "x" * 21, "obs-source:a/b"):
        with pytest.raises(EngineError, match="bad OBS channel name"):
            open_sink(bad, fps=30)
    with pytest.raises(EngineError, match=r"no frames in 'sdv2-nobody-cap' within 0.3 s \(nothing writes it\): in OBS "
                       "add the StreamDiffusionV2 filter"):
        shm.open_shm_source("obs-filter:nobody", timeout=0.3)


def test_the_source_yields_live_frames_and_waits_through_a_writer_restart(channel):
    seg = segment_name(channel, "cap")
    sink = ShmFrameSink(seg, fps=20)
    sink.write(np.full((30, 40, 3), 1, np.uint8))
    source = open_source(f"obs-filter:{channel}")
    assert isinstance(source, ShmFrameSource) and source.kind == "stream"
    assert source.size == (30, 40) and source.fps == pytest.approx(20.0)
    it = iter(source)
    frame, pts = next(it)
    assert frame.max() == 1 and pts == 0.0
    sink.write(np.full((30, 40, 3), 2, np.uint8))
    frame, pts = next(it)
    assert frame.max() == 2 and pts > 0
    sink.close()  # the writer stops (OBS closed) ...
    restarted = ShmFrameSink(seg, fps=20)  # ... and comes back: the source just carries on
    restarted.write(np.full((30, 40, 3), 3, np.uint8))
    assert next(it)[0].max() == 3
    restarted.close()
    source.close()
    with pytest.raises(StopIteration):
        next(it)


def test_the_source_skips_leftover_frames(channel):
    seg = segment_name(channel, "cap")
    with ShmFrameSink(seg) as sink:
        sink.write(np.full((8, 8, 3), 1, np.uint8))
        time.sleep(1.2)  # the writer lives (heartbeat) but its frame is old, like an OBS filter nobody read
        with pytest.raises(EngineError, match=r"\(no new frame arrived\)"):
            ShmFrameSource(seg, timeout=0.5)
        sink.write(np.full((8, 8, 3), 2, np.uint8))
        source = ShmFrameSource(seg, timeout=5)
        assert next(iter(source))[0].max() == 2
        source.close()
