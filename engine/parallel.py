"""Pipeline parallelism over N ranks (torch.distributed: NCCL on CUDA, gloo on CPU), applied from outside the model.

Roles. Rank 0 lives in the engine's process: a StreamPipeline whose denoise executor is a `RingDenoiser`. It owns
the source side (motion controller, VAE encoder, umT5, the controls), the embeddings and the first range of blocks,
and drives the stream. Every rank owns a contiguous range of transformer blocks, *only* their weights (read lazily
from the mmap'd checkpoint; the rest of the model stays on the meta device) and the KV cache of those blocks. The
last rank also runs the head, the flow -> x0 step, the re-noising and the VAE decode, and sends results back to
rank 0. Messages travel the ring 0 -> 1 -> ... -> N-1 -> 0, so every rank sees jobs, prompt changes and control
changes in the same order. Each message is a typed `Header` (encoded as a fixed-size int64 tensor) and tensors
whose shapes the receiver derives from it.

Exact single-GPU semantics with step-and-layer pipelining. A Stream-Batch call k runs the n slots of the batch;
slot j holds a chunk at denoising step j and its input is the re-noised output of slot j-1 of call k-1. Here each
slot is a micro-batch ("job" (k, j)) that flows through the ranks on its own; rank 0 starts job (k, 0) (a new
chunk) at once and job (k, j) as soon as job (k-1, j-1) has come back. With n + 1 >= N every rank stays busy, and
each rank applies the cache writes of the jobs in exactly the single-GPU order, so the frames equal one rank's
(up to float rounding of batch-1 vs batch-n matmuls). Noise is keyed by (seed, chunk, kind, index) so the last rank
draws the same re-noising noise the single-process pipeline does. (Upstream instead lets N calls circulate whose
slot inputs come from N calls earlier, which changes the output with the number of GPUs.)

Transfers use isend with one message in flight per link (overlapping the next job's compute); rank 0 posts the
receive for a job's result when it submits the job, so the ring cannot deadlock. A rank that dies or stops
answering is detected within `timeout` seconds and reported as an EngineError naming it. Block rebalancing moves
weights (re-read by the new owner) and KV-cache layers (`KVCache.export_layers` / `import_layers`), only between
neighbouring ranks (a run of layers that changes owner over several ranks is relayed through the ranks between)
and only while the ring is drained (rank 0 waits for every job in flight before it sends REBALANCE).

On CUDA the host never waits for the GPU in steady state. Every rank (rank 0 too) makes its device the current one
(`engine.device.use_device`). Each rank has three streams (`Streams`): compute (the current stream), send and
receive; a send records an event on the compute stream and the send stream waits on it, so the host queues the next
job while the activations go out; the next job's activations arrive on the receive stream while the compute stream
works, and the compute stream (not the host) waits for them through an event. Headers go up through pinned memory
without blocking. Busy time per rank comes from CUDA events around the work, read once they have passed
(`BusyClock`), not from `torch.cuda.synchronize`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import enum
import functools
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from sdv2_studio.engine.config import CacheConfig, ModelConfig
from sdv2_studio.engine.device import use_device
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.kv_cache import KVCache
from sdv2_studio.engine.pipeline import RENOISE, DenoiseJob, StreamPipeline, decode_latent, keyed_noise
from sdv2_studio.engine.schedule import FlowMatchGrid

# -- messages -----------------------------------------------------------------------------------------------------

MAX_RANKS = 8


class Kind(enum.IntEnum):
    """What a message between ranks is."""

    JOB = 1  # one micro-batch on its way through the blocks: tokens, e0, e, x_t (0 -> 1 -> ... -> N-1)
    RESULT = 2  # a job's re-noised latent, the input of the chunk's next step (N-1 -> 0)
    FRAMES = 3  # a job's decoded frames (N-1 -> 0)
    PROMPT = 4  # the text-embedded prompt: new cross-attention K/V
    STEPS = 5  # denoising steps per chunk (`arg`)
    RESIZE = 6  # new Stream-Batch depth (`arg` slots)
    REPLICATE = 7  # every slot becomes a copy of slot 0 (after the Stream-Batch prepare)
    RESET = 8  # a new stream: empty caches with `arg` slots, fresh decoder state
    TIMES = 9  # collect the ranks' stage times (`arg` 1: then reset the counters)
    REBALANCE = 10  # move blocks to `ranges`
    STOP = 11


@dataclass(frozen=True)
class Header:
    """The header in front of every message; the payload's shapes follow from it and the geometry.

    Wire format (`to_tensor` / `from_tensor`): HEADER_SIZE int64 values, the scalar fields in declaration order,
    then `ranges` as MAX_RANKS (start, stop) pairs and `busy_us` as MAX_RANKS values, zero-padded.
    """

    kind: Kind
    chunk: int = 0  # JOB: the stream chunk; with `seed` it keys the re-noising noise
    slot: int = 0  # JOB: the Stream-Batch slot (cache slot) it runs in
    start: int = 0  # JOB: temporal RoPE start frame
    frames: int = 0  # JOB: latent frames
    t: int = 0  # JOB: timestep
    t_next: int = -1  # JOB: re-noise to this timestep and return the latent; -1: the chunk's last step
    advance: bool = False  # JOB: the chunk's last write to the cache (ring pointer rule)
    decode: bool = False  # JOB on its last step: decode and return the frames (else pipeline fill: dropped)
    seed: int = 0
    noise_index: int = 0  # JOB: which re-noising draw of the chunk (its step or slot)
    arg: int = 0  # STEPS: steps; RESIZE, RESET: slots; TIMES: 1 = reset the counters
    ranges: tuple[tuple[int, int], ...] = ()  # REBALANCE: the new [start, stop) of every rank
    busy_us: tuple[int, ...] = ()  # JOB, RESULT, FRAMES: cumulative busy microseconds per rank (ranks passed)

    def __post_init__(self) -> None:
        if len(self.ranges) > MAX_RANKS or len(self.busy_us) > MAX_RANKS:
            raise ValueError(f"a header carries at most {MAX_RANKS} ranks")
        set_ = object.__setattr__  # frozen: normalise to the declared types
        set_(self, "kind", Kind(self.kind))
        set_(self, "advance", bool(self.advance))
        set_(self, "decode", bool(self.decode))
        set_(self, "ranges", tuple((int(a), int(b)) for a, b in self.ranges))
        set_(self, "busy_us", tuple(int(u) for u in self.busy_us) + (0,) * (MAX_RANKS - len(self.busy_us)))

    def with_busy(self, rank: int, seconds: float) -> Header:
        """This header with rank `rank`'s cumulative busy time."""
        busy = list(self.busy_us)
        busy[rank] = int(seconds * 1e6)
        return dataclasses.replace(self, busy_us=tuple(busy))

    def to_tensor(self, device) -> torch.Tensor:
        """On a CUDA device: uploaded from pinned memory without blocking (torch's pinned-memory cache keeps the
        buffer until the copy has run)."""
        scalars = [int(getattr(self, name)) for name in _SCALARS]
        ranges = [v for r in self.ranges for v in r] + [0] * (2 * (MAX_RANKS - len(self.ranges)))
        host = torch.tensor(scalars + ranges + list(self.busy_us), dtype=torch.long)
        if torch.device(device).type == "cuda" and torch.cuda.is_available():
            return host.pin_memory().to(device, non_blocking=True)
        return host.to(device)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> Header:
        v = t.tolist()
        n = len(_SCALARS)
        pairs = v[n:n + 2 * MAX_RANKS]
        ranges = tuple((a, b) for a, b in zip(pairs[::2], pairs[1::2]) if b > 0)  # every rank holds >= 1 block
        return cls(**dict(zip(_SCALARS, v[:n])), ranges=ranges, busy_us=tuple(v[n + 2 * MAX_RANKS:]))

    @staticmethod
    def buffer(device) -> torch.Tensor:
        """A receive buffer for one header."""
        return torch.empty(HEADER_SIZE, dtype=torch.long, device=device)


_SCALARS = tuple(f.name for f in dataclasses.fields(Header))[:-2]  # all but ranges and busy_us
HEADER_SIZE = len(_SCALARS) + 3 * MAX_RANKS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_blocks(num_layers: int, ranks: int) -> list[range]:
    """Contiguous, even block ranges (the remainder goes to the low ranks)."""
    if not 1 <= ranks <= num_layers:
        raise EngineError(f"cannot split {num_layers} blocks over {ranks} ranks; use 1 to {num_layers} ranks")
    base, extra = divmod(num_layers, ranks)
    out, start = [], 0
    for r in range(ranks):
        n = base + (1 if r < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def balanced_split(ranges: list[range], stage_s: list[float], block_s: list[float]) -> list[range]:
    """New contiguous ranges that even out measured stage times.

    stage_s[r]: measured time of rank r per job including its fixed work (embedding/encode on rank 0, head and
    decode on the last rank); block_s[r]: its time per block. Fixed work = stage - blocks * per-block time; blocks
    are then handed out greedily so that max(fixed_r + blocks_r * per_block) is minimal (each rank keeps >= 1).
    """
    n_ranks, total = len(ranges), ranges[-1].stop
    per_block = sum(block_s) / len(block_s)
    fixed = [max(0.0, s - len(r) * b) for s, r, b in zip(stage_s, ranges, block_s)]
    counts = [1] * n_ranks
    for _ in range(total - n_ranks):  # give each next block to the rank that would finish earliest with it
        r = min(range(n_ranks), key=lambda i: fixed[i] + (counts[i] + 1) * per_block)
        counts[r] += 1
    out, start = [], 0
    for c in counts:
        out.append(range(start, start + c))
        start += c
    return out


def on_cuda(device: torch.device) -> bool:
    """Whether work on `device` is queued on CUDA streams (the seam the tests drive to run the stream and event code
    on a CPU with recording fakes of torch.cuda)."""
    return device.type == "cuda"


class Streams:
    """A rank's CUDA streams: compute (the current stream: embeddings, blocks, head, decode), send and receive.

    `sending()`: the send stream waits on an event recorded on the compute stream (what the send reads is
    computed), then the messages are queued from it; the host does not wait. `receiving(into_computed=...)`:
    receives are queued from the receive stream (a header's host read then waits for that stream alone, not for
    the compute queued behind it); buffers that the compute stream allocated are written only after an event of the
    compute stream (`into_computed`; buffers the receive stream allocates need no wait but `hand_over`), and on
    leaving, the compute stream waits on an event of the receive stream before it uses them. Off CUDA all are
    no-ops (gloo on the CPU is synchronous per op).
    """

    def __init__(self, device: torch.device):
        self.cuda = on_cuda(device)
        if self.cuda:
            self.compute = torch.cuda.current_stream(device)
            self.send, self.recv = torch.cuda.Stream(device), torch.cuda.Stream(device)

    @contextlib.contextmanager
    def sending(self):
        if not self.cuda:
            yield
            return
        self.send.wait_event(self._event(self.compute))
        with torch.cuda.stream(self.send):
            yield

    @contextlib.contextmanager
    def receiving(self, into_computed: bool = True):
        if not self.cuda:
            yield
            return
        if into_computed:
            self.recv.wait_event(self._event(self.compute))
        with torch.cuda.stream(self.recv):
            yield
        self.compute.wait_event(self._event(self.recv))

    def hand_over(self, tensors: list[torch.Tensor]) -> None:
        """Tensors the receive stream allocated, now used by the compute stream: their memory goes back to the
        receive stream only after the compute stream's work queued when they are freed (`record_stream`)."""
        if self.cuda:
            for t in tensors:
                t.record_stream(self.compute)

    @staticmethod
    def _event(stream) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(stream)
        return event


class BusyClock:
    """Seconds a rank spends computing (per-rank utilisation, stage times for rebalancing).

    CPU: host wall time around the work. CUDA: a pair of timing events around the work on the compute stream,
    added once the end event has passed (`query`, which never waits), so the total trails the GPU by the work
    still queued; `settle()` waits for that rest and is called only on a drained ring (stage times).
    """

    def __init__(self, device: torch.device):
        self.cuda = on_cuda(device)
        self._seconds = 0.0
        self._pending: collections.deque = collections.deque()  # (start, end) events not yet read

    @contextlib.contextmanager
    def measure(self):
        if not self.cuda:
            t0 = time.perf_counter()
            yield
            self._seconds += time.perf_counter() - t0
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._pending.append((start, end))
        self._read(wait=False)

    def _read(self, wait: bool) -> None:
        while self._pending and (wait or self._pending[0][1].query()):
            start, end = self._pending.popleft()
            if wait:
                end.synchronize()
            self._seconds += start.elapsed_time(end) / 1000

    @property
    def seconds(self) -> float:
        self._read(wait=False)
        return self._seconds

    def settle(self) -> float:
        self._read(wait=True)
        return self._seconds

    def reset(self) -> None:
        self.settle()
        self._seconds = 0.0


def run_own_blocks(dit, cache: KVCache, tokens: torch.Tensor, e0: torch.Tensor, *, start: int,
                   grid: tuple[int, int, int], advance: bool, slot: int, clock: BusyClock) -> torch.Tensor:
    """One micro-batch through this rank's blocks (writing their KV cache), timed on `clock`."""
    with clock.measure():
        return dit.cached_blocks(tokens, e0, grid, cache, cache.plan([start], grid, advance, slot=slot))


def stage_select(blocks: range, first: bool, last: bool) -> Callable[[str], bool]:
    """Which state-dict tensors a rank materialises."""
    embeds = ("patch_embedding.", "text_embedding.", "time_embedding.", "time_projection.")

    def select(name: str) -> bool:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) in blocks
        if name.startswith("head."):
            return last
        return first and name.startswith(embeds)

    return select


@dataclass
class Geometry:
    """What every rank needs to size messages: model width, tokens per latent frame, latent and pixel sizes."""

    cfg: ModelConfig
    size: tuple[int, int]  # pixels (h, w)
    dtype: torch.dtype

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.size[0] // 8, self.size[1] // 8

    @property
    def frame_tokens(self) -> int:
        h, w = self.latent_hw
        return (h // self.cfg.patch_size[1]) * (w // self.cfg.patch_size[2])

    def job_payload(self, frames: int, device) -> list[torch.Tensor]:
        C, h, w = self.cfg.dim, *self.latent_hw
        return [torch.empty(1, frames * self.frame_tokens, C, dtype=self.dtype, device=device),  # tokens
                torch.empty(1, frames, 6, C, dtype=torch.float32, device=device),  # e0
                torch.empty(1, frames, C, dtype=torch.float32, device=device),  # e
                torch.empty(1, self.cfg.in_dim, frames, h, w, dtype=self.dtype, device=device)]  # x_t

    def result_payload(self, frames: int, device) -> list[torch.Tensor]:
        h, w = self.latent_hw
        return [torch.empty(1, self.cfg.in_dim, frames, h, w, dtype=self.dtype, device=device)]

    def frames_payload(self, n: int, device) -> list[torch.Tensor]:
        return [torch.empty(n, *self.size, 3, dtype=torch.uint8, device=device)]


class Link:
    """Ordered point-to-point messages: an int64 header, then tensors whose shapes the receiver derives."""

    def __init__(self, device: torch.device, timeout: float, alive: Callable[[], str | None] | None = None):
        self.device, self.timeout = device, timeout
        self.alive = alive  # returns a message when a peer is known dead
        self.streams = Streams(device)
        self._inflight: dict[int, list] = collections.defaultdict(list)
        self.waited_s = 0.0  # time spent blocked on peers (excluded from this rank's busy time)

    def send(self, dst: int, header: Header, tensors: list[torch.Tensor] = ()) -> None:
        """Non-blocking, from the send stream; waits for the previous message to `dst` first (one message in flight
        per link; the sent tensors are kept until then, so their memory is not reused while a send reads it)."""
        self.wait_sent(dst)
        with self.streams.sending():
            sent = [t.contiguous() for t in (header.to_tensor(self.device), *tensors)]
            self._inflight[dst] = [dist.isend(t, dst) for t in sent] + sent

    def wait_sent(self, dst: int) -> None:
        works = [w for w in self._inflight.get(dst, []) if isinstance(w, dist.Work)]
        for w in works:
            self.wait(w, f"rank {dst} is not receiving")
        self._inflight[dst] = []

    def post_recv(self, src: int, tensors: list[torch.Tensor]) -> list:
        return [dist.irecv(t, src) for t in tensors]

    def recv_header(self, src: int) -> Header:
        with self.streams.receiving(into_computed=False):
            h = Header.buffer(self.device)
            self.wait(dist.irecv(h, src), f"rank {src} sent nothing")
            return Header.from_tensor(h)

    def recv(self, src: int, buffers: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        """Receive a message's tensors into `buffers()`, allocated on the receive stream: on CUDA the next job's
        activations arrive while the compute stream still runs the current one (`Streams.hand_over`)."""
        with self.streams.receiving(into_computed=False):
            tensors = buffers()
            for w in self.post_recv(src, tensors):
                self.wait(w, f"rank {src} stopped mid-message")
        self.streams.hand_over(tensors)
        return tensors

    def wait(self, work, what: str, timeout: float | None = None) -> None:
        """Wait for `work`; EngineError naming the problem after the timeout or when a peer is gone.

        gloo: a blocking wait with a deadline (its p2p work never reports completion to polling; a peer that dies
        breaks the TCP connection, which ends the wait at once). NCCL: poll so host-side liveness checks run.
        """
        limit = self.timeout if timeout is None else timeout
        t0 = time.perf_counter()
        try:
            self._wait(work, what, limit)
        finally:
            self.waited_s += time.perf_counter() - t0

    def _wait(self, work, what: str, limit: float) -> None:
        if self.device.type != "cuda":
            try:
                work.wait(timeout=datetime.timedelta(seconds=limit))
                return
            except RuntimeError as e:
                dead = self.alive() if self.alive is not None else None
                raise EngineError(dead or f"pipeline stalled: {what} within {limit:.0f} s ({str(e).splitlines()[0]}); "
                                  "restart the engine") from None
        deadline = time.monotonic() + limit
        while not work.is_completed():
            if self.alive is not None and (dead := self.alive()):
                raise EngineError(dead)
            if time.monotonic() > deadline:
                raise EngineError(f"pipeline stalled: {what} for {limit:.0f} s (a rank hung?); restart the engine")
            time.sleep(0.0005)
        work.wait()


class Receiver:
    """Rank 0's inbox for results from the last rank, in submission order.

    `expect(payload)` is called when a job is submitted (with empty tensors its payload is received into);
    `poll()` returns the (header, payload) pairs that have arrived without blocking, `get()` blocks for the next
    one. gloo: a thread posts and waits on the receives (gloo p2p work cannot be polled); NCCL: receives are posted
    at once and polled from the caller's thread (NCCL p2p must stay on one thread).
    """

    def __init__(self, link: Link, src: int):
        self.link, self.src = link, src
        self.threaded = link.device.type != "cuda"
        self._pending: collections.deque = collections.deque()  # (buffers, works) not yet delivered (NCCL)
        self._done: queue.Queue = queue.Queue()  # (buffers, error) (gloo)
        self.outstanding = 0
        if self.threaded:
            self._todo: queue.Queue = queue.Queue()
            self._thread = threading.Thread(target=self._run, name="sdv2-rank0-recv", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (bufs := self._todo.get()) is not None:
            try:
                works = self.link.post_recv(self.src, bufs)
                for w in works:  # _wait: this thread's waiting is not rank 0's (main thread's) idle time
                    self.link._wait(w, f"rank {self.src} did not return its result", self.link.timeout)
                self._done.put((bufs, None))
            except BaseException as e:  # handed to the engine thread
                self._done.put((None, e))
                return

    def expect(self, payload: list[torch.Tensor]) -> None:
        bufs = [Header.buffer(self.link.device), *payload]
        self.outstanding += 1
        if self.threaded:
            self._todo.put(bufs)
        else:
            with self.link.streams.receiving():
                self._pending.append((bufs, self.link.post_recv(self.src, bufs)))

    def _deliver(self, bufs: list[torch.Tensor] | None, error: BaseException | None = None):
        if error is not None:
            if isinstance(error, EngineError):
                raise error
            time.sleep(0.2)  # let a dead rank's exit be reaped so it can be named
            dead = self.link.alive() if self.link.alive is not None else None
            raise EngineError(dead or f"pipeline receive failed ({str(error).splitlines()[0][:160]}); "
                              "restart the engine")
        self.outstanding -= 1
        h = Header.from_tensor(bufs[0])
        if h.kind == Kind.FRAMES:  # read by the host: copied out here, on the receive stream
            return h, [t.cpu() for t in bufs[1:]]
        return h, bufs[1:]

    def poll(self) -> list[tuple[Header, list[torch.Tensor]]]:
        out = []
        if self.threaded:
            while True:
                try:
                    out.append(self._deliver(*self._done.get_nowait()))
                except queue.Empty:
                    return out
        while self._pending and all(w.is_completed() for w in self._pending[0][1]):
            bufs, works = self._pending.popleft()
            with self.link.streams.receiving(into_computed=False):
                for w in works:
                    w.wait()
                out.append(self._deliver(bufs))
        return out

    def get(self) -> tuple[Header, list[torch.Tensor]]:
        t0 = time.perf_counter()
        try:
            return self._get()
        finally:
            self.link.waited_s += time.perf_counter() - t0

    def _get(self):
        if self.threaded:
            try:
                item = self._done.get(timeout=self.link.timeout)
            except queue.Empty:
                raise EngineError(self.link.alive() or f"rank {self.src} returned nothing for "
                                  f"{self.link.timeout:.0f} s (a rank hung?); restart the engine") from None
            return self._deliver(*item)
        bufs, works = self._pending.popleft()
        with self.link.streams.receiving(into_computed=False):
            for w in works:
                self.link.wait(w, f"rank {self.src} did not return its result")
            return self._deliver(bufs)

    def close(self) -> None:
        if self.threaded:
            self._todo.put(None)


# -- the per-rank stage ---------------------------------------------------------------------------------------------


@dataclass
class StageSpec:
    """Everything a rank process needs to build its part (picklable for torch.multiprocessing spawn)."""

    rank: int
    world: int
    port: int
    device: str
    dtype: str
    model: str  # "tiny" or a checkpoint path
    base: str | None
    blocks: list[tuple[int, int]]  # [start, stop) per rank
    size: tuple[int, int]
    slots: int
    steps: int
    cache: CacheConfig = field(default_factory=CacheConfig)
    timeout: float = 60.0
    threads: int = 1
    taehv: str | None = None
    parent_pid: int = 0


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def build_stage_model(model: str, blocks: range, first: bool, last: bool, device, dtype: torch.dtype):
    """The DiT with only this rank's tensors materialised (others on meta)."""
    from sdv2_studio.engine.models import random_preset, tiny_dit

    select = stage_select(blocks, first, last)
    if random_preset(model):
        return tiny_dit(device, dtype, select=select, preset=random_preset(model))
    from sdv2_studio.engine.checkpoint import load_model

    dit, _ = load_model(model, dtype=dtype, device=device, select=select)
    return dit


def materialise_blocks(dit, model: str, blocks: list[int], device, dtype: torch.dtype) -> None:
    """Load the weights of `blocks` into a partly materialised model (block rebalancing)."""
    if not blocks:
        return
    wanted = set(blocks)

    def select(name: str) -> bool:
        return name.startswith("blocks.") and int(name.split(".")[1]) in wanted

    from sdv2_studio.engine.models import random_preset, tiny_dit

    if random_preset(model):
        src = tiny_dit(device, dtype, select=select, preset=random_preset(model))
    else:
        from sdv2_studio.engine.checkpoint import load_model

        src, _ = load_model(model, dtype=dtype, device=device, select=select)
    for b in blocks:
        dit.blocks[b] = src.blocks[b]


def release_blocks(dit, blocks: list[int]) -> None:
    """Free the weights of blocks this rank no longer owns (they become meta tensors again)."""
    from sdv2_studio.engine.model import Block

    for b in blocks:
        with torch.device("meta"):
            dit.blocks[b] = Block(dit.cfg)


class Stage:
    """One rank's blocks + their KV cache; runs jobs and applies control messages in ring order."""

    def __init__(self, dit, geo: Geometry, blocks: range, slots: int, steps: int, cache_cfg: CacheConfig,
                 device: torch.device):
        self.dit, self.geo, self.device, self.cache_cfg = dit, geo, device, cache_cfg
        self.cache = self._new_cache(blocks, slots, steps)
        self.clock = BusyClock(device)  # compute time spent in blocks (utilisation, rebalancing)
        self.jobs = 0

    def _new_cache(self, blocks: range, slots: int, steps: int) -> KVCache:
        cache = KVCache(self.dit.cfg, self.cache_cfg, slots, self.geo.frame_tokens, device=self.device,
                        dtype=self.geo.dtype, blocks=blocks)
        cache.set_steps(steps)
        return cache

    def run_blocks(self, tokens, e0, h: Header) -> torch.Tensor:
        """tokens [1, N, C] -> [1, N, C] through this rank's blocks (writing their cache)."""
        grid = self.dit.grid(h.frames, *self.geo.latent_hw)
        out = run_own_blocks(self.dit, self.cache, tokens, e0, start=h.start, grid=grid, advance=h.advance,
                             slot=h.slot, clock=self.clock)
        self.jobs += 1
        return out

    def apply(self, h: Header, payload: list[torch.Tensor]) -> None:
        """Control messages (same order on every rank as on rank 0)."""
        if h.kind == Kind.PROMPT:
            self.cache.set_cross(self.dit, payload[0])
        elif h.kind == Kind.STEPS:
            self.cache.set_steps(h.arg)
        elif h.kind == Kind.RESIZE:
            self.cache = self.cache.resized(h.arg)
        elif h.kind == Kind.REPLICATE:
            for j in range(1, self.cache.B):
                self.cache.copy_slot(0, j)
        elif h.kind == Kind.RESET:
            self.cache = self._new_cache(self.cache.blocks, h.arg, self.cache.total_steps)
        else:
            raise ValueError(f"not a control message: {h.kind!r}")


def control_payload(kind: Kind, geo: Geometry, device) -> list[torch.Tensor]:
    if kind == Kind.PROMPT:
        return [torch.empty(1, geo.cfg.text_len, geo.cfg.dim, dtype=torch.float32, device=device)]
    return []


def stage_main(spec: StageSpec) -> None:
    """Entry point of ranks 1..N-1 (spawned by the engine, or started by torchrun)."""
    torch.set_num_threads(max(1, spec.threads))
    device = torch.device(spec.device)
    use_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():  # port 0: launched by torchrun (env:// rendezvous)
        method = f"tcp://127.0.0.1:{spec.port}" if spec.port else "env://"
        dist.init_process_group(backend, init_method=method, rank=spec.rank, world_size=spec.world,
                                timeout=datetime.timedelta(seconds=spec.timeout))
    dtype = _dtype(spec.dtype)
    ranges = [range(a, b) for a, b in spec.blocks]
    rank, world = spec.rank, spec.world
    last = rank == world - 1
    parent = spec.parent_pid or os.getppid()

    def parent_gone() -> str | None:
        return None if os.getppid() == parent or spec.parent_pid == 0 else "the engine process is gone"

    link = Link(device, spec.timeout, parent_gone)
    try:
        with torch.inference_mode():
            dit = build_stage_model(spec.model, ranges[rank], False, last, device, dtype)
            geo = Geometry(dit.cfg, spec.size, dtype)
            stage = Stage(dit, geo, ranges[rank], spec.slots, spec.steps, spec.cache, device)
            tail = _Tail(spec, geo, device) if last else None
            _serve(rank, world, link, stage, tail, geo, device, spec, ranges)
    except EngineError:
        pass  # the engine reports what happened; this rank just ends
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class _Tail:
    """The last rank's extra work: head, x0, re-noising, VAE decode."""

    def __init__(self, spec: StageSpec, geo: Geometry, device: torch.device):
        self.grid = FlowMatchGrid()
        from sdv2_studio.engine.models import random_preset

        if random_preset(spec.model):
            from sdv2_studio.engine.models import tiny_vae

            self.vae = tiny_vae(device, geo.dtype, dit_preset=random_preset(spec.model))
        else:
            from sdv2_studio.engine.models import resolve_model
            from sdv2_studio.engine.vae import load_vae

            self.vae = load_vae(resolve_model(spec.model, spec.base).vae_file, dtype=geo.dtype, device=device)
        self.decoder = self.vae
        if spec.taehv:
            from sdv2_studio.engine.taehv import load_taehv

            self.decoder = load_taehv(spec.taehv, dtype=torch.float16 if device.type == "cuda" else torch.float32,
                                      device=device)
        self.clock = BusyClock(device)  # head, re-noising and decode

    def reset(self) -> None:
        """A new stream: fresh decoder state."""
        self.vae.reset_stream()
        if self.decoder is not self.vae:
            self.decoder.reset_stream()

    def finish(self, dit, tokens, e, x_t, h: Header) -> tuple[Kind | None, list[torch.Tensor]]:
        with self.clock.measure():
            return self._finish(dit, tokens, e, x_t, h)

    def _finish(self, dit, tokens, e, x_t, h: Header) -> tuple[Kind | None, list[torch.Tensor]]:
        """Head + flow -> x0; then either re-noise (RESULT) or decode (FRAMES) or drop (pipeline fill)."""
        grid = dit.grid(h.frames, *x_t.shape[-2:])
        flow = dit.unembed(tokens, e, grid)
        t = torch.full((1, grid[0]), float(h.t), device=x_t.device)
        x0 = self.grid.to_x0(flow, x_t, t)
        if h.t_next >= 0:
            noise = keyed_noise(x0.shape, h.seed, h.chunk, RENOISE, h.noise_index, x0.device)
            return Kind.RESULT, [self.grid.add_noise(x0, noise.to(x0.dtype), h.t_next)]
        if not h.decode:
            return None, []
        return Kind.FRAMES, [decode_latent(self.vae, self.decoder, x0).contiguous()]


def _serve(rank, world, link: Link, stage: Stage, tail: _Tail | None, geo: Geometry, device, spec, ranges) -> None:
    prev, nxt = rank - 1, (rank + 1) % world
    while True:
        h = link.recv_header(prev)
        if h.kind == Kind.JOB:
            tokens, e0, e, x_t = link.recv(prev, functools.partial(geo.job_payload, h.frames, device))
            tokens = stage.run_blocks(tokens, e0, h)
            if tail is None:
                link.send(nxt, h.with_busy(rank, stage.clock.seconds), [tokens, e0, e, x_t])
            else:
                out_kind, out = tail.finish(stage.dit, tokens, e, x_t, h)
                if out_kind is not None:
                    done = dataclasses.replace(h, kind=out_kind).with_busy(rank, stage.clock.seconds
                                                                           + tail.clock.seconds)
                    link.send(0, done, out)
        elif h.kind == Kind.TIMES:  # the ring is drained: waiting for the last timing events costs nothing
            times = link.recv(prev, lambda: [torch.empty(3 * world, dtype=torch.float64, device=device)])[0]
            clocks = [stage.clock] + ([tail.clock] if tail is not None else [])
            blocks_s, *extra_s = [c.settle() for c in clocks]
            times[3 * rank:3 * rank + 3] = torch.tensor([blocks_s, sum(extra_s), block_params(stage.dit)],
                                                        dtype=torch.float64)
            if h.arg:  # reset the counters for the next measurement
                for c in clocks:
                    c.reset()
            link.send(nxt, h, [times])
        elif h.kind == Kind.REBALANCE:
            new = [range(a, b) for a, b in h.ranges]
            if tail is None:
                link.send(nxt, h, [])
            link.wait_sent(nxt)
            stage.cache = move_blocks(stage.dit, stage.cache, ranges, new, rank, spec.model, device, geo.dtype)
            ranges[:] = new
        elif h.kind == Kind.STOP:
            if tail is None:
                link.send(nxt, h, [])
                link.wait_sent(nxt)
            return
        else:
            payload = link.recv(prev, functools.partial(control_payload, h.kind, geo, device))
            stage.apply(h, payload)
            if tail is None:
                link.send(nxt, h, payload)
            elif h.kind == Kind.RESET:
                tail.reset()


def block_params(dit) -> int:
    """Parameters of transformer blocks materialised on this rank (meta tensors hold no memory)."""
    return sum(p.numel() for p in dit.blocks.parameters() if p.device.type != "meta")


def block_transfers(old: list[range], new: list[range]) -> list[tuple[int, int, range]]:
    """(from rank, to rank, blocks) for each run of consecutive blocks that changes owner, in block order."""
    owner_old = {b: r for r, rg in enumerate(old) for b in rg}
    owner_new = {b: r for r, rg in enumerate(new) for b in rg}
    runs: list[tuple[int, int, range]] = []
    for b in range(old[-1].stop):
        src, dst = owner_old[b], owner_new[b]
        if src == dst:
            continue
        if runs and runs[-1][:2] == (src, dst) and runs[-1][2].stop == b:
            runs[-1] = (src, dst, range(runs[-1][2].start, b + 1))
        else:
            runs.append((src, dst, range(b, b + 1)))
    return runs


def neighbour_hops(old: list[range], new: list[range]) -> list[tuple[int, int, range]]:
    """`block_transfers` as hops between neighbouring ranks, in order: a run moving from rank 0 to rank 2 goes
    0 -> 1, then 1 -> 2 (rank 1 relays it), so layers travel only over the ring's own links."""
    hops = []
    for src, dst, blocks in block_transfers(old, new):
        step = 1 if dst > src else -1
        hops += [(r, r + step, blocks) for r in range(src, dst, step)]
    return hops


def move_kv_layers(cache: KVCache, old: list[range], new: list[range], rank: int) -> tuple[KVCache, list[int]]:
    """This rank's part of moving KV-cache layers from `old` to `new` ranges: (its cache for new[rank], the blocks
    it gained). Every rank runs the same hop schedule (`neighbour_hops`), so the blocking send/recv pairs match;
    called only on a drained ring."""
    moved = cache.for_blocks(new[rank])
    gained: list[int] = []
    relayed: dict[tuple[int, int], list[torch.Tensor]] = {}  # layers passing through this rank
    one = cache.export_layers(range(cache.blocks.start, cache.blocks.start + 1))  # every rank holds >= 1 block
    for src, dst, blocks in neighbour_hops(old, new):
        key = (blocks.start, blocks.stop)
        if src == rank:
            for t in relayed.pop(key, None) or cache.export_layers(blocks):
                dist.send(t.contiguous(), dst)
        elif dst == rank:
            state = [torch.empty((len(blocks), *t.shape[1:]), dtype=t.dtype, device=t.device) for t in one]
            for t in state:
                dist.recv(t, src)
            if blocks.start in new[rank]:
                moved.import_layers(blocks, state)
                gained += blocks
            else:
                relayed[key] = state
    return moved, gained


def move_blocks(dit, cache: KVCache, old: list[range], new: list[range], rank: int, model: str, device,
                dtype: torch.dtype) -> KVCache:
    """Hand blocks (weights + KV cache layers) to their new owners (`move_kv_layers`). Weights are not sent: the
    new owner reads them from the checkpoint (or the tiny model's seeds); the old owner frees them."""
    moved, gained = move_kv_layers(cache, old, new, rank)
    materialise_blocks(dit, model, gained, device, dtype)
    release_blocks(dit, [b for b in old[rank] if b not in new[rank]])
    return moved


# -- rank 0: the ring executor ----------------------------------------------------------------------------------------


class RingDenoiser:
    """The denoise executor of rank 0 (engine.pipeline.DenoiseExecutor): the DiT spread over the ranks of a ring.

    Each step (no-batch) or slot (Stream-Batch) of a chunk is a job: rank 0 embeds it, runs its own blocks and
    passes it on; the last rank returns the re-noised latent (the input of the chunk's next step) or the decoded
    frames, which `collect` hands out in order. `rebalance_after`: chunks of warm-up after which blocks are
    rebalanced once from measured stage times (0: never).
    """

    def __init__(self, dit, *, size: tuple[int, int], dtype: torch.dtype, ranges: list[range], link: Link,
                 model_spec: str = "tiny", rebalance_after: int = 0):
        self.dit, self.link = dit, link
        self.geo = Geometry(dit.cfg, size, dtype)
        self.ranges, self.world = list(ranges), len(ranges)
        self.model_spec, self.rebalance_after = model_spec, rebalance_after
        self.rebalances: list[list[tuple[int, int]]] = []
        self.cache: KVCache | None = None
        self.inbox = Receiver(link, self.world - 1)
        self.clock = BusyClock(link.device)  # rank 0's blocks
        self.busy_other_s = 0.0  # rank 0's other work (host time: encode, embeddings, text)
        self._busy: collections.deque = collections.deque(maxlen=256)  # (time, cumulative busy us per rank)
        self._arrived: list[np.ndarray] = []  # decoded frames not yet collected
        self._returns: collections.deque[torch.Tensor] = collections.deque()  # re-noised results not yet used
        self._chunks = 0  # chunks of the stream submitted
        self._first_decode = True  # the stream's first decode gives 4 F - 3 frames

    @property
    def blocks(self) -> range:
        return self.ranges[0]

    @property
    def device(self) -> torch.device:
        return self.link.device

    # the executor interface ---------------------------------------------------------------------------------------

    def reset(self, cache: KVCache) -> None:
        self.cache, self._chunks, self._first_decode = cache, 0, True
        self._send(Header(Kind.RESET, arg=cache.B))

    def set_prompt(self, ctx: torch.Tensor) -> None:
        emb = self.dit.embed_text(ctx.to(self.device)).float()
        self.cache.set_cross(self.dit, emb)
        self._send(Header(Kind.PROMPT), [emb])

    def set_steps(self, steps: int) -> None:
        self.cache.set_steps(steps)
        self._send(Header(Kind.STEPS, arg=steps))

    def resize(self, slots: int) -> None:
        self._drain()
        self.cache = self.cache.resized(slots)
        self._send(Header(Kind.RESIZE, arg=slots))

    def sequential(self, job: DenoiseJob, start: int, slots: int) -> None:
        ts, x = job.timesteps, job.x
        for i, t in enumerate(ts):
            final = i == len(ts) - 1
            self._submit(x, job, slot=0, start=start, t=t, t_next=-1 if final else ts[i + 1], advance=final,
                         decode=final, noise_index=i)
            if not final:
                x = self._next_return()
        if slots > 1:
            self._send(Header(Kind.REPLICATE))
            for j in range(1, slots):
                self.cache.copy_slot(0, j)
            self._returns.clear()
        self._chunks = job.chunk + 1

    def batch_step(self, job: DenoiseJob, starts: list[int], *, fresh: bool, finish: bool) -> None:
        """As LocalDenoiser.batch_step, one micro-batch per slot."""
        ts, n = job.timesteps, len(starts)
        if fresh:
            self._returns.clear()
        for j in range(n):
            if j == 0:
                x = job.x
            elif fresh:
                x = torch.zeros_like(job.x)
            else:
                x = self._next_return()
            self._submit(x, job, slot=j, start=starts[j], t=ts[j], t_next=ts[j + 1] if j < n - 1 else -1,
                         advance=True, decode=j == n - 1 and finish, noise_index=j)
        self._chunks = job.chunk + 1

    @contextlib.contextmanager
    def chunk_scope(self):
        """Accounts rank 0's own work besides its blocks (VAE encode, embeddings, text: wall time minus blocks and
        waits), rebalances once after `rebalance_after` chunks, and names a failed rank."""
        t0, blocks0, waited0 = time.perf_counter(), self.clock.seconds, self.link.waited_s
        try:
            yield
            self.busy_other_s += max(0.0, time.perf_counter() - t0 - (self.clock.seconds - blocks0)
                                     - (self.link.waited_s - waited0))
            if self.rebalance_after and self._chunks == self.rebalance_after and not self.rebalances:
                self.rebalance()
        except RuntimeError as e:
            raise self._failed(e) from None

    def collect(self, wait: bool = False) -> list[np.ndarray]:
        try:
            if wait:
                self._drain()
            for h, payload in self.inbox.poll():
                self._sort(h, payload)
        except RuntimeError as e:
            raise self._failed(e) from None
        out, self._arrived = self._arrived, []
        return out

    def utilisation(self) -> list[float]:
        """Fraction of wall time each rank spent computing, over the last few seconds of results."""
        if len(self._busy) < 2:
            return []
        (t0, b0), (t1, b1) = self._busy[0], self._busy[-1]
        return [min(1.0, (y - x) / 1e6 / (t1 - t0)) if t1 > t0 else 0.0 for x, y in zip(b0, b1)]

    # jobs and results -----------------------------------------------------------------------------------------------

    def _send(self, header: Header, payload: list[torch.Tensor] = ()) -> None:
        if self.world > 1:
            self.link.send(1, header, payload)

    def _submit(self, x: torch.Tensor, job: DenoiseJob, *, slot: int, start: int, t: int, t_next: int,
                advance: bool, decode: bool, noise_index: int) -> None:
        """Run rank 0's part of a job and pass it on; post the receive for its result."""
        F = x.shape[2]
        tt = torch.full((1, F), float(t), device=self.device)
        tokens, e, e0, grid = self.dit.embed(x, tt)
        tokens = run_own_blocks(self.dit, self.cache, tokens, e0, start=start, grid=grid, advance=advance, slot=slot,
                                clock=self.clock)
        h = Header(Kind.JOB, chunk=job.chunk, slot=slot, start=start, frames=F, t=t, t_next=t_next, advance=advance,
                   decode=decode, seed=job.seed, noise_index=noise_index)
        self.link.send(1, h.with_busy(0, self.clock.seconds + self.busy_other_s), [tokens, e0, e, x.to(self.geo.dtype)])
        if t_next >= 0:
            self.inbox.expect(self.geo.result_payload(F, self.device))
        elif decode:
            n = 4 * F - (3 if self._first_decode else 0)
            self._first_decode = False
            self.inbox.expect(self.geo.frames_payload(n, self.device))

    def _sort(self, h: Header, payload: list[torch.Tensor]) -> None:
        now = time.perf_counter()
        self._busy.append((now, h.busy_us[:self.world]))
        while len(self._busy) > 2 and now - self._busy[0][0] > 3.0:
            self._busy.popleft()
        if h.kind == Kind.FRAMES:
            self._arrived += list(payload[0].numpy())
        else:
            self._returns.append(payload[0])

    def _next_return(self) -> torch.Tensor:
        """The oldest re-noised result not yet used (waiting for it; frames arriving first are kept)."""
        while not self._returns:
            self._sort(*self.inbox.get())
        return self._returns.popleft()

    def _drain(self) -> None:
        """Wait until every submitted job has come back (results kept for the next call, frames for `collect`)."""
        while self.inbox.outstanding:
            self._sort(*self.inbox.get())

    def _failed(self, e: RuntimeError) -> EngineError:
        """A communication error from torch.distributed, named for the user (which rank died, what to do)."""
        time.sleep(0.2)  # let the dead rank's exit be reaped so it can be named
        dead = self.link.alive() if self.link.alive is not None else None
        return EngineError(dead or f"pipeline communication failed ({str(e).splitlines()[0][:160]}); "
                           "restart the engine")

    # -- block rebalancing -------------------------------------------------------------------------------------------

    def stage_times(self, reset: bool = False) -> list[tuple[float, float, int]]:
        """(block seconds, other seconds, materialised block parameters) per rank since the last reset (drains)."""
        self._drain()
        buf = torch.zeros(3 * self.world, dtype=torch.float64, device=self.device)
        buf[0:3] = torch.tensor([self.clock.settle(), self.busy_other_s, block_params(self.dit)], dtype=torch.float64)
        if reset:
            self.clock.reset()
            self.busy_other_s = 0.0
        self.inbox.expect([torch.empty(3 * self.world, dtype=torch.float64, device=self.device)])
        self._send(Header(Kind.TIMES, arg=int(reset)), [buf])
        _, (got,) = self.inbox.get()
        t = got.cpu().tolist()
        return [(t[3 * r], t[3 * r + 1], int(t[3 * r + 2])) for r in range(self.world)]

    def rebalance(self, ranges: list[range] | None = None) -> list[range]:
        """Move blocks so that measured stage times even out (or to `ranges`); the output does not change."""
        times = self.stage_times(reset=True)
        if ranges is None:
            stage_s = [b + o for b, o, _ in times]
            block_s = [b / max(1, len(rg)) for (b, _, _), rg in zip(times, self.ranges)]
            ranges = balanced_split(self.ranges, stage_s, block_s)
        if [tuple(r) for r in ranges] == [tuple(r) for r in self.ranges]:
            return self.ranges
        self.link.send(1, Header(Kind.REBALANCE, ranges=tuple((r.start, r.stop) for r in ranges)), [])
        self.link.wait_sent(1)
        self.cache = move_blocks(self.dit, self.cache, self.ranges, ranges, 0, self.model_spec, self.device,
                                 self.geo.dtype)
        self.ranges = list(ranges)
        self.rebalances.append([(r.start, r.stop) for r in ranges])
        return self.ranges

    def close(self) -> None:
        """Stop every rank after the work in flight."""
        self._drain()
        self.inbox.close()
        self._send(Header(Kind.STOP))
        self.link.wait_sent(1)


# -- launching ranks ------------------------------------------------------------------------------------------------


def rank_devices(device: str, ranks: int) -> list[torch.device]:
    """Devices for `ranks` stages: an explicit list "cuda:0,2", else cuda:0..N-1 when that many GPUs exist, else
    N CPU processes (gloo)."""
    if "," in device:
        devs = [torch.device(d if ":" in d or d == "cpu" else f"cuda:{d}") for d in device.split(",")]
        if ranks not in (1, len(devs)) and ranks != 0:
            raise EngineError(f"--ranks {ranks} does not match the {len(devs)} devices in --device {device}")
        missing = [str(d) for d in devs if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count()]
        if missing:
            raise EngineError(f"--device {device}: {', '.join(missing)} not found ({torch.cuda.device_count()} CUDA "
                              "devices visible); use the devices `nvidia-smi` lists or --device cpu")
        return devs
    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() >= ranks:
        return [torch.device(f"cuda:{i}") for i in range(ranks)]
    if device.startswith("cuda") and not device == "auto":
        raise EngineError(f"{ranks} pipeline ranks need {ranks} GPUs but {torch.cuda.device_count()} are visible; "
                          "use fewer --ranks or --device cpu")
    return [torch.device("cpu")] * ranks


class RankGroup:
    """Ranks 1..N-1 as spawned processes plus this process as rank 0, joined in one process group."""

    def __init__(self, *, devices: list[torch.device], model: str, base: str | None, dtype: torch.dtype,
                 size: tuple[int, int], slots: int, steps: int, cache: CacheConfig, num_layers: int,
                 timeout: float = 60.0, threads: int = 1, taehv: str | None = None):
        self.world = len(devices)
        self.devices = devices
        self.ranges = split_blocks(num_layers, self.world)
        self.timeout = timeout
        use_device(devices[0])  # rank 0 too: else NCCL and the caching allocator open a context on cuda:0
        torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
        port = 0 if torchrun else free_port()
        ctx = torch.multiprocessing.get_context("spawn")
        self.procs = []
        for r in range(1, 1 if torchrun else self.world):
            spec = StageSpec(rank=r, world=self.world, port=port, device=str(devices[r]),
                             dtype=str(dtype).removeprefix("torch."), model=model, base=base,
                             blocks=[(g.start, g.stop) for g in self.ranges], size=size, slots=slots, steps=steps,
                             cache=cache, timeout=timeout, threads=threads, taehv=taehv, parent_pid=os.getpid())
            p = ctx.Process(target=stage_main, args=(spec,), daemon=True, name=f"sdv2-rank{r}")
            p.start()
            self.procs.append(p)
        backend = "nccl" if devices[0].type == "cuda" else "gloo"
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}" if port else "env://", rank=0,
                                    world_size=self.world, timeout=datetime.timedelta(seconds=timeout))
        except Exception as e:
            self.kill()
            raise EngineError(f"could not start the {self.world} pipeline ranks ({e}); check the devices") from e
        self.link = Link(devices[0], timeout, self.dead_rank)

    def dead_rank(self) -> str | None:
        for r, p in enumerate(self.procs, start=1):
            if p.exitcode is not None:
                return (f"pipeline rank {r} ({self.devices[r]}) died (exit code {p.exitcode}); "
                        "restart the engine (check that device's memory and drivers)")
        return None

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(5)

    def shutdown(self, pipeline: StreamPipeline | None) -> None:
        """Stop the ranks cleanly when possible (`pipeline` runs on this group's RingDenoiser), by force otherwise."""
        try:
            if pipeline is not None and self.dead_rank() is None:
                pipeline.executor.close()
                for p in self.procs:
                    p.join(self.timeout)
        except EngineError:
            pass
        finally:
            self.kill()
            if dist.is_initialized():
                dist.destroy_process_group()
