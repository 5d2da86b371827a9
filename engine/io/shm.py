"""Frames through shared memory: the engine's end of the OBS plugin's frame protocol (no encoding, no copies in OBS).

The layout, the lock-free publish/read rules and the liveness rule are specified in
``obs_bridge/plugin/PROTOCOL.md``; the plugin implements the same in C. In short: a segment is a named shared-memory
object with a 256-byte header and a ring of slots; the writer publishes each frame into the slot after the newest
under a per-slot sequence lock, so it never waits for readers, and a reader that races it sees the lock change and
throws its copy away. A heartbeat in the header tells readers whether the writer still lives.

Specs (see :func:`open_shm_source` and :func:`open_shm_sink`)::

    obs-filter[:CHANNEL]    source: frames an OBS "StreamDiffusionV2" filter captures   (segment sdv2-CHANNEL-cap)
    obs-source[:CHANNEL]    sink: styled frames for the OBS "StreamDiffusionV2" source  (segment sdv2-CHANNEL-sty)

CHANNEL defaults to ``main``. POSIX systems use ``multiprocessing.shared_memory`` (POSIX shm), Windows the same
module's named file mappings.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Literal

import numpy as np
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.frames import fit_frame
from sdv2_studio.engine.io.protocols import Frame, FrameSink, FrameSource

__all__ = [
    "DEFAULT_CHANNEL",
    "ShmFrameReader",
    "ShmFrameSink",
    "ShmFrameSource",
    "SlotInfo",
    "check_channel",
    "open_shm_sink",
    "open_shm_source",
    "segment_name",
]

MAGIC = b"SDV2FRM\0"
VERSION = 1
HEADER_SIZE = 256
SLOT_HEADER_SIZE = 64
RGBA8, RGB8 = 1, 2
BYTES_PER_PIXEL = {RGBA8: 4, RGB8: 3}
CLOSED, RETIRED = 1, 2
MAX_SIDE = 16384
SLOTS = 3
DEFAULT_CHANNEL = "main"
ALIVE_NS = 500_000_000  # a writer whose heartbeat is older than this (5 missed beats) is gone
HEARTBEAT = 0.1  # seconds between a writer's heartbeats
REOPEN = 0.25  # seconds between a reader's attempts to find a (new) writer

# magic, version, header_size, slot_count, slot_header_size, slot_stride, capacity, flags, writer_pid,
# heartbeat_ns, latest, created_ns, period_ns
_HEADER = struct.Struct("<8sIIIIQQIIQQQQ")
# lock, frame, width, height, stride, format, pts_ns, write_ns
_SLOT = struct.Struct("<QQIIIIQQ")
_U64, _U32 = struct.Struct("<Q"), struct.Struct("<I")
_FLAGS, _HEARTBEAT, _LATEST, _READER = 40, 48, 56, 80  # offsets of the header fields that change after creation

now_ns = time.perf_counter_ns  # the shared monotonic clock of PROTOCOL.md (CLOCK_MONOTONIC, mach time, QPC)


def check_channel(name: str) -> str:
    """A channel name as the protocol allows it (1-20 of ``A-Z a-z 0-9 _ -``), else EngineError."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,20}", name):
        raise EngineError(f"bad OBS channel name {name!r}: use 1-20 letters, digits, '_' or '-', e.g. main")
    return name


def segment_name(channel: str, direction: Literal["cap", "sty"]) -> str:
    """The shared-memory name of ``channel``: ``cap`` = frames from the OBS filter, ``sty`` = styled frames to OBS."""
    return f"sdv2-{check_channel(channel)}-{direction}"


@dataclass(frozen=True)
class Header:
    slot_count: int
    slot_stride: int
    capacity: int
    flags: int
    writer_pid: int
    heartbeat_ns: int
    latest: int
    created_ns: int
    period_ns: int

    def alive(self, now: int) -> bool:
        return not self.flags & (CLOSED | RETIRED) and now - self.heartbeat_ns < ALIVE_NS


def read_header(buf: memoryview, segment: str) -> Header | None:
    """The validated header of a mapped segment; None while its writer has not written it yet (all zero)."""
    if len(buf) < HEADER_SIZE:
        return None
    magic, version, header_size, count, slot_header, stride, capacity, *rest = _HEADER.unpack_from(buf, 0)
    if magic == bytes(8):
        return None
    if magic != MAGIC:
        raise EngineError(f"shared memory {segment!r} is not a StreamDiffusionV2 frame channel; pick another channel")
    if version != VERSION:
        raise EngineError(f"{segment!r} speaks frame protocol v{version}, this engine v{VERSION}: update the plugin "
                          "(`sdv2 obs install-plugin`) and the app to the same release")
    if (header_size != HEADER_SIZE or slot_header != SLOT_HEADER_SIZE or not 2 <= count <= 16 or stride % 64
            or capacity > stride - SLOT_HEADER_SIZE or HEADER_SIZE + count * stride > len(buf)):
        raise EngineError(f"shared memory {segment!r} has an inconsistent header; restart the program that writes it")
    return Header(count, stride, capacity, *rest)


_TRACKED = os.name == "posix" and sys.version_info < (3, 13)  # SharedMemory registers every segment it maps


def _map(name: str, create: bool = False, size: int = 0) -> SharedMemory:
    """A SharedMemory that Python's resource tracker leaves alone: by default it unlinks, when this process exits,
    every segment the process ever mapped, including OBS's. Segments of dead writers are removed by the next writer
    of the same name instead (PROTOCOL.md), as the plugin does."""
    if not _TRACKED:
        return SharedMemory(name, create=create, size=size, **({"track": False} if sys.version_info >= (3, 13) else {}))
    shm = SharedMemory(name, create=create, size=size)
    resource_tracker.unregister(shm._name, "shared_memory")  # the "/name" it registered
    return shm


def _attach(name: str) -> SharedMemory | None:
    try:
        return _map(name)
    except FileNotFoundError:
        return None


def _unlink(shm: SharedMemory) -> None:
    if _TRACKED:
        resource_tracker.register(shm._name, "shared_memory")  # unlink() unregisters it again
    shm.unlink()


@dataclass(frozen=True)
class SlotInfo:
    frame: int  # the writer's frame number (1, 2, ...)
    pts_ns: int  # when the picture was made, on the shared clock
    write_ns: int  # when the writer published it


class ShmFrameSink(FrameSink):
    """Writes frames into segment ``segment`` (see the module docstring); never waits for readers.

    Takes ``HxWx3`` RGB or ``HxWx4`` RGBA uint8 frames of any size (``size=(h, w)`` fits them to one size). The
    segment is created at the first frame and re-created when a larger frame arrives. ``fps`` is published as the
    nominal frame interval. A heartbeat thread keeps readers informed that this writer lives, frames or not.
    Raises EngineError if another live writer holds the segment.
    """

    def __init__(self, segment: str, *, fps: float | None = None, size: tuple[int, int] | None = None,
                 slots: int = SLOTS) -> None:
        if not 2 <= slots <= 16:
            raise ValueError(f"slots must be 2-16, not {slots}")
        self.segment, self.size, self.slots = segment, size, slots
        self.period_ns = int(1e9 / fps) if fps else 0
        self.frames = 0
        self._shm: SharedMemory | None = None
        self._capacity = self._stride = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"heartbeat {segment}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._closed.wait(HEARTBEAT):
            with self._lock:
                if self._shm is not None:
                    _U64.pack_into(self._shm.buf, _HEARTBEAT, now_ns())

    def _create(self, capacity: int) -> None:
        stride = -(-(SLOT_HEADER_SIZE + capacity) // 64) * 64
        size = HEADER_SIZE + self.slots * stride
        for _ in range(40):  # on Windows a dead writer's name lingers until its readers let go (~REOPEN)
            try:
                shm = _map(self.segment, create=True, size=size)
                break
            except FileExistsError:
                self._evict()
                time.sleep(0.05)
        else:
            raise EngineError(f"shared memory {self.segment!r} is still held by another program; close it and retry")
        now = now_ns()
        _HEADER.pack_into(shm.buf, 0, bytes(8), VERSION, HEADER_SIZE, self.slots, SLOT_HEADER_SIZE, stride, capacity,
                          0, os.getpid() & 0xFFFFFFFF, now, 0, now, self.period_ns)
        shm.buf[:8] = MAGIC  # last: a reader that sees the magic sees a complete header
        self._shm, self._capacity, self._stride = shm, capacity, stride

    def _evict(self) -> None:
        """Remove the segment of a writer that is gone; EngineError if a live one holds it."""
        other = _attach(self.segment)
        if other is None:
            return
        try:
            header = read_header(other.buf, self.segment)
        except EngineError:
            header = None  # unreadable: not a live writer of ours
        other.close()
        if header is not None and header.alive(now_ns()):
            raise EngineError(f"another program (pid {header.writer_pid}) already writes {self.segment!r}; stop it or "
                              "pick another channel name")
        _unlink(other)  # POSIX: frees the name; on Windows the mapping vanishes once its readers let go

    def _release(self, flag: int) -> None:
        if self._shm is None:
            return
        _U32.pack_into(self._shm.buf, _FLAGS, flag)
        self._shm.close()
        _unlink(self._shm)
        self._shm = None

    def write(self, frame: Frame, pts_seconds: float | None = None) -> None:
        """Publish one frame. ``pts_seconds`` is not used: readers get the time of the write."""
        if self._closed.is_set():
            raise EngineError(f"the shared-memory output {self.segment!r} is closed; open it again")
        if (not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3
                or frame.shape[2] not in (3, 4)):
            raise ValueError(f"expected an HxWx3 or HxWx4 uint8 frame, got {getattr(frame, 'shape', type(frame))}")
        if self.size is not None and frame.shape[:2] != self.size:
            frame = fit_frame(np.ascontiguousarray(frame[..., :3]), self.size)
        h, w = frame.shape[:2]
        if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
            raise EngineError(f"frame {w}x{h} is too large for shared memory (at most {MAX_SIDE} a side)")
        with self._lock:
            fmt = RGB8 if frame.shape[2] == 3 else RGBA8
            stride = w * BYTES_PER_PIXEL[fmt]
            if self._shm is None or stride * h > self._capacity:
                self._release(RETIRED)
                self._create(stride * h)
            buf = self._shm.buf
            n = _U64.unpack_from(buf, _LATEST)[0] + 1
            at = HEADER_SIZE + (n % self.slots) * self._stride
            lock = _U64.unpack_from(buf, at)[0]
            _U64.pack_into(buf, at, lock + 1)  # odd: being written
            pixels = np.ndarray(frame.shape, np.uint8, buffer=buf, offset=at + SLOT_HEADER_SIZE)
            pixels[...] = frame
            del pixels
            t = now_ns()
            _SLOT.pack_into(buf, at, lock + 1, n, w, h, stride, fmt, t, t)
            _U64.pack_into(buf, at, lock + 2)  # even: stable
            _U64.pack_into(buf, _LATEST, n)
            _U64.pack_into(buf, _HEARTBEAT, t)
            self.frames += 1

    def close(self) -> None:
        """Mark the segment closed (readers show "not running" at once) and remove it. Safe to call twice."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._beat.join()
        with self._lock:
            self._release(CLOSED)


class ShmFrameReader:
    """Takes the newest complete frame of segment ``segment`` without ever blocking its writer.

    :meth:`poll` returns ``(rgb, info)`` for a frame not seen before, or None. While the writer is gone (absent,
    closed, or its heartbeat older than 0.5 s) nothing is returned and the name is re-opened every 250 ms, so a
    restarted writer (a new object under the same name) is picked up. ``races`` counts copies discarded because
    the writer overwrote the slot meanwhile; ``skipped`` counts frames that were never polled.
    """

    def __init__(self, segment: str) -> None:
        self.segment = segment
        self.races = self.skipped = 0
        self.header: Header | None = None  # as of the last poll
        self._shm: SharedMemory | None = None
        self._created = 0
        self._last = 0
        self._next_open = 0

    @property
    def state(self) -> Literal["absent", "gone", "waiting", "alive"]:
        """``absent`` (no segment), ``gone`` (writer stopped or died), ``waiting`` (alive, no frame yet), ``alive``."""
        if self.header is None:
            return "absent"
        if not self.header.alive(now_ns()):
            return "gone"
        return "alive" if self.header.latest else "waiting"

    def _open(self, now: int) -> None:
        self._next_open = now + int(REOPEN * 1e9)
        shm = _attach(self.segment)
        if shm is None:
            self.header = None
            return
        try:
            header = read_header(shm.buf, self.segment)
        except EngineError:
            shm.close()
            raise
        if header is None or not header.alive(now):
            shm.close()
            self.header = header
            return
        if header.created_ns != self._created:  # a new writer: its frames are numbered afresh
            self._created, self._last = header.created_ns, 0
        self._shm, self.header = shm, header

    def _drop(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None

    def poll(self) -> tuple[np.ndarray, SlotInfo] | None:
        now = now_ns()
        if self._shm is not None:
            self.header = read_header(self._shm.buf, self.segment)
            if not self.header.alive(now):
                self._drop()  # never show a dead writer's last frame; let go of the name (Windows)
        if self._shm is None:
            if now < self._next_open:
                return None
            self._open(now)
            if self._shm is None:
                return None
        return self._take(self._shm.buf, self.header)

    def _take(self, buf: memoryview, header: Header) -> tuple[np.ndarray, SlotInfo] | None:
        _U64.pack_into(buf, _READER, now_ns())  # tells the writer someone reads (the OBS filter idles otherwise)
        for _ in range(4):
            n = _U64.unpack_from(buf, _LATEST)[0]
            if n == 0 or n == self._last:
                return None
            at = HEADER_SIZE + (n % header.slot_count) * header.slot_stride
            lock, frame, w, h, stride, fmt, pts, written = _SLOT.unpack_from(buf, at)
            if lock & 1 or frame != n:  # the writer lapped the ring since we read `latest`
                self.races += 1
                continue
            bpp = BYTES_PER_PIXEL.get(fmt, 0)
            if not (bpp and 0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and w * bpp <= stride
                    and stride * h <= header.capacity):
                if _U64.unpack_from(buf, at)[0] != lock:
                    self.races += 1
                    continue
                raise EngineError(f"{self.segment!r} holds a malformed frame ({w}x{h}, format {fmt}); restart the "
                                  "program that writes it")
            view = np.ndarray((h, w, 3), np.uint8, buffer=buf, offset=at + SLOT_HEADER_SIZE, strides=(stride, bpp, 1))
            rgb = view.copy()
            del view
            if _U64.unpack_from(buf, at)[0] != lock:  # overwritten during the copy: torn, throw it away
                self.races += 1
                continue
            self.skipped += max(0, n - self._last - 1) if self._last else 0
            self._last = n
            return rgb, SlotInfo(frame, pts, written)
        return None

    def close(self) -> None:
        self._drop()
        self.header = None


class ShmFrameSource(FrameSource):
    """Live frames from segment ``segment``, newest first (older unread frames are skipped, never queued).

    Waits up to ``timeout`` seconds for the first frame (EngineError naming ``hint`` otherwise). Afterwards it waits
    for as long as it takes: if the writer stops, iteration pauses until a writer comes back (killing OBS does not
    stop the engine). Frames published more than a second before they are read are leftovers (an OBS filter idles
    with its last frame while nobody reads) and are skipped. ``fps`` is the writer's nominal rate (30 if it does not
    say); ``size`` is the first frame's. Timestamps are seconds since the first frame on the writer's clock.
    """

    kind = "stream"  # a live input: the engine drops frames when behind instead of queueing them

    def __init__(self, segment: str, *, timeout: float = 10.0, poll: float = 0.002, hint: str = "") -> None:
        self.segment, self.poll_interval = segment, poll
        self.reader = ShmFrameReader(segment)
        self._closed = False
        end = time.monotonic() + timeout
        while (got := self._fresh()) is None:
            if time.monotonic() >= end:
                state = {"absent": "nothing writes it", "gone": "its writer stopped"}.get(self.reader.state,
                                                                                         "no new frame arrived")
                self.reader.close()
                raise EngineError(f"no frames in {segment!r} within {timeout:g} s ({state}){hint}")
            time.sleep(poll)
        self._first = got
        self._t0 = got[1].pts_ns
        self.size = got[0].shape[:2]
        period = self.reader.header.period_ns if self.reader.header else 0
        self.fps = 1e9 / period if period else 30.0

    def _fresh(self) -> tuple[np.ndarray, SlotInfo] | None:
        got = self.reader.poll()
        return None if got is None or now_ns() - got[1].write_ns > ALIVE_NS else got

    def __iter__(self):
        first, self._first = self._first, None
        if first is not None:
            yield first[0], 0.0
        while not self._closed:
            got = self._fresh()
            if got is None:
                time.sleep(self.poll_interval)
                continue
            yield got[0], (got[1].pts_ns - self._t0) / 1e9

    @property
    def dropped(self) -> int:
        return self.reader.skipped

    def close(self) -> None:
        self._closed = True
        self.reader.close()

    def __repr__(self) -> str:
        h, w = self.size
        return f"ShmFrameSource({self.segment!r}, {w}x{h}@{self.fps:g})"


def _channel(spec: str, kind: str) -> str:
    head, _, name = spec.strip().partition(":")
    if head.lower() != kind:
        raise EngineError(f"bad spec {spec!r}: use {kind} or {kind}:CHANNEL")
    return check_channel(name.strip() or DEFAULT_CHANNEL)


def open_shm_source(spec: str, *, timeout: float = 10.0) -> ShmFrameSource:
    """``obs-filter[:CHANNEL]``: the frames of the OBS source that carries a StreamDiffusionV2 filter on CHANNEL."""
    channel = _channel(spec, "obs-filter")
    hint = (f": in OBS add the StreamDiffusionV2 filter to a visible source with channel {channel!r} "
            "(install it with `sdv2 obs install-plugin`)")
    return ShmFrameSource(segment_name(channel, "cap"), timeout=timeout, hint=hint)


def open_shm_sink(spec: str, *, fps: float, size: tuple[int, int] | None = None) -> ShmFrameSink:
    """``obs-source[:CHANNEL]``: styled frames for OBS's StreamDiffusionV2 source (or filter in replace mode)."""
    return ShmFrameSink(segment_name(_channel(spec, "obs-source"), "sty"), fps=fps, size=size)
