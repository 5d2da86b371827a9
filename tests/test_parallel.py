"""Pipeline parallelism on CPU over gloo (real torch.distributed ranks in spawned processes, tiny model)."""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest
import sdv2_studio.engine.parallel as par
import torch
from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.models import tiny_dit

SIZE = (64, 64)
FRAMES = 5 + 19 * 4  # 20 chunks


def wait_chunks(eng: Engine, n: int, out: list) -> None:
    """Wait until the worker has run `n` chunks, so a control change lands on a known chunk boundary."""
    deadline = time.monotonic() + 120
    while eng.stats().chunks < n:
        assert time.monotonic() < deadline, "engine made no progress"
        while (f := eng.pull(timeout=0.02)) is not None:
            out.append(f)


def stream(ranks: int, *, steps: int = 2, batch: bool = True, rebalance_after: int = 0, changes=None,
           timeout: float = 60.0, mode: bool | None = None) -> tuple[list[np.ndarray], Engine]:
    """Run FRAMES test frames; `changes` maps a chunk index to set_controls kwargs applied before that chunk;
    `mode`: switch to Stream-Batch (True) or no-batch (False) before the first chunk."""
    eng = Engine(EngineConfig(model="tiny", device="cpu", size=SIZE, lossless=True, ranks=ranks, batch=batch,
                              controls=Controls(steps=steps), rank_timeout=timeout, prompt_cache_dir="",
                              rebalance_after=rebalance_after, threads_per_rank=1))
    eng.start()
    if mode is not None:  # the worker waits for the first frames, so this lands before chunk 0
        eng.pipeline.set_mode(mode)
    src = TestPatternSource(size=SIZE, fps=16)
    out: list[np.ndarray] = []
    chunk_starts = {0: 0, **{c: 5 + 4 * (c - 1) for c in range(1, 21)}}
    for i in range(FRAMES):
        for c, kw in (changes or {}).items():
            if i == chunk_starts[c]:
                wait_chunks(eng, c, out)
                eng.set_controls(**kw)
        eng.push(src.frame(i))
        while (f := eng.pull()) is not None:
            out.append(f)
    eng.finish()
    while not eng.done():
        if (f := eng.pull(timeout=0.5)) is not None:
            out.append(f)
    return out, eng


def compare(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[int, float]:
    assert len(a) == len(b) == FRAMES
    d = [np.abs(x.astype(int) - y.astype(int)) for x, y in zip(a, b)]
    return max(x.max() for x in d), float(np.mean([x.mean() for x in d]))


CHANGES = {8: {"prompt": "ukiyo-e woodblock print"}, 13: {"steps": 3}, 16: {"noise_scale": 0.7, "seed": 5}}


@pytest.fixture(scope="module")
def single():
    out, eng = stream(1, changes=CHANGES)
    eng.stop()
    return out


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_reproduce_one_rank_across_rebalance_and_control_changes(single, ranks, monkeypatch):
    # Force a real block move at chunk 4 (rank 0 keeps one block, the last rank takes the rest).
    forced = [range(0, 1), range(1, 4)] if ranks == 2 else [range(0, 1), range(1, 3), range(3, 4)]
    monkeypatch.setattr(par, "balanced_split", lambda *a: forced)
    out, eng = stream(ranks, rebalance_after=4, changes=CHANGES)
    pipe, ring = eng.pipeline, eng.pipeline.executor
    assert ring.rebalances == [[(r.start, r.stop) for r in forced]]
    assert ring.ranges[0] == forced[0] and pipe.cache.blocks == forced[0]
    eng.stop()
    worst, mean = compare(single, out)
    # Batch-1 micro-batches vs one batch-n matmul differ only by float rounding: at most a couple of 8-bit levels.
    assert worst <= 4 and mean < 0.05, (worst, mean)


def test_no_batch_mode_two_ranks_equal(single):
    a, e1 = stream(1, batch=False)
    e1.stop()
    b, e2 = stream(2, batch=False)
    e2.stop()
    worst, mean = compare(a, b)
    assert worst <= 2 and mean < 0.01, (worst, mean)
    # Leaving Stream-Batch before the first chunk starts a new stream on every rank (one-slot caches everywhere).
    c, e3 = stream(2, batch=True, mode=False)
    assert e3.pipeline.cache.B == 1
    e3.stop()
    assert compare(b, c) == (0, 0.0)


def test_each_rank_holds_only_its_blocks():
    _, eng = stream(2, rebalance_after=0)
    util = eng.stats().rank_utilisation
    times = eng.pipeline.executor.stage_times()
    eng.stop()
    assert len(util) == 2 and all(0.0 < u <= 1.0 for u in util), util  # per-rank busy fraction, in stats
    total = sum(p.numel() for p in tiny_dit().blocks.parameters())
    per_rank = [t[2] for t in times]
    assert sum(per_rank) == total
    assert per_rank == [total // 2, total // 2]  # 4 blocks over 2 ranks: 1/N of the DiT's blocks each


def test_killing_a_rank_is_a_clear_error_not_a_hang():
    eng = Engine(EngineConfig(model="tiny", device="cpu", size=SIZE, lossless=True, ranks=2, rank_timeout=20,
                              prompt_cache_dir="", rebalance_after=0, threads_per_rank=1))
    eng.start()
    src = TestPatternSource(size=SIZE, fps=16)
    for i in range(9):
        eng.push(src.frame(i))
    wait_chunks(eng, 2, [])
    eng._group.procs[0].kill()
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"rank 1 .*died"):
        for i in range(9, 200):
            eng.push(src.frame(i), timeout=30)
            eng.pull(timeout=0.05)
    assert time.monotonic() - t0 < 90  # detected (rank_timeout 20 s at most), not a hang; generous for a busy CI
    with pytest.raises(EngineError):
        eng.stop()
    # ... and the engine can be started again.
    out, again = stream(2)
    again.stop()
    assert len(out) == FRAMES


def test_headers_round_trip_through_their_tensor():
    job = par.Header(par.Kind.JOB, chunk=7, slot=2, start=49, frames=1, t=500, t_next=400, advance=True, seed=2**63 - 1,
                     noise_index=2).with_busy(1, 0.25)
    wire = job.to_tensor("cpu")
    assert wire.dtype == torch.long and wire.shape == (par.HEADER_SIZE,)
    back = par.Header.from_tensor(wire)
    assert back == job and back.kind is par.Kind.JOB and back.decode is False
    assert back.busy_us[:3] == (0, 250_000, 0) and len(back.busy_us) == par.MAX_RANKS
    moves = par.Header(par.Kind.REBALANCE, ranges=((0, 1), (1, 3), (3, 4)))
    assert par.Header.from_tensor(moves.to_tensor("cpu")).ranges == ((0, 1), (1, 3), (3, 4))
    with pytest.raises(ValueError):  # kind 0 is no message: garbage is not read as one
        par.Header.from_tensor(torch.zeros(par.HEADER_SIZE, dtype=torch.long))
    with pytest.raises(ValueError, match="at most"):
        par.Header(par.Kind.REBALANCE, ranges=((0, 1),) * (par.MAX_RANKS + 1))


def test_block_transfers_move_runs_of_layers_in_block_order():
    assert par.block_transfers([range(0, 2), range(2, 4)], [range(0, 1), range(1, 4)]) == [(0, 1, range(1, 2))]
    old, new = [range(0, 4), range(4, 8), range(8, 12)], [range(0, 2), range(2, 9), range(9, 12)]
    assert par.block_transfers(old, new) == [(0, 1, range(2, 4)), (2, 1, range(8, 9))]
    assert par.block_transfers(old, old) == []


def test_balanced_split_evens_stage_times():
    # Rank 0 also encodes (fixed 3 units), rank 1 decodes (fixed 1): 8 blocks of 1 unit each.
    ranges = [range(0, 4), range(4, 8)]
    new = par.balanced_split(ranges, stage_s=[3 + 4, 1 + 4], block_s=[1.0, 1.0])
    assert [len(r) for r in new] == [3, 5] and new[0].start == 0 and new[-1].stop == 8
    assert par.split_blocks(30, 4) == [range(0, 8), range(8, 16), range(16, 23), range(23, 30)]
    with pytest.raises(EngineError, match="cannot split"):
        par.split_blocks(4, 5)


def test_cli_runs_two_ranks_end_to_end(tmp_path):
    import av
    from sdv2_studio.engine.cli import main

    out = tmp_path / "pp.mp4"
    assert main(["run", "--ranks", "2", "--model", "tiny", "--size", "64x64", "--frames", "13", "--out", str(out)]) == 0
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 13


def test_every_rank_makes_its_own_cuda_device_current(monkeypatch):
    """`--device cuda:1,2`: rank 0 sets cuda:1 (before anything touches CUDA), rank 1 sets cuda:2."""
    import cuda_fakes
    from sdv2_studio.engine.config import CacheConfig

    cuda_fakes.install(monkeypatch.setattr)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 9))
    spawned = []

    class Ctx:  # the spawn context: records the ranks' specs instead of starting processes
        def Process(self, target, args, **kw):
            spawned.append(args[0])
            return type("P", (), {"start": lambda s: None, "is_alive": lambda s: False,
                                  "join": lambda s, t=None: None})()

    def no_nccl(*a, **kw):
        raise RuntimeError("no NCCL here")

    monkeypatch.setattr(torch.multiprocessing, "get_context", lambda method: Ctx())
    monkeypatch.setattr(par.dist, "init_process_group", no_nccl)
    devices = [torch.device("cuda:1"), torch.device("cuda:2")]
    with pytest.raises(EngineError, match="could not start"):
        par.RankGroup(devices=devices, model="tiny", base=None, dtype=torch.bfloat16, size=SIZE, slots=2, steps=2,
                      cache=CacheConfig(), num_layers=4)
    assert cuda_fakes.LOG["set_device"] == ["cuda:1"]  # rank 0, before the process group
    [spec] = spawned
    assert spec.rank == 1 and spec.device == "cuda:2"
    with pytest.raises(RuntimeError, match="no NCCL"):
        par.stage_main(spec)  # what rank 1 does first in its own process
    assert cuda_fakes.LOG["set_device"] == ["cuda:1", "cuda:2"]


def test_cuda_path_never_synchronizes_and_sends_from_a_side_stream(single, monkeypatch, tmp_path):
    """The ranks' CUDA code path (streams, events; torch.cuda replaced by recording fakes, gloo underneath) over 20
    chunks with control changes: no synchronize of any kind on any rank, every send queued from a side stream that
    was made to wait on the compute stream, receives on a third stream, busy time from timing events, and the
    frames of one rank."""
    import json

    import cuda_fakes

    cuda_fakes.install(monkeypatch.setattr)
    monkeypatch.setattr(par, "stage_main", cuda_fakes.stage_main)  # spawned ranks install the fakes too
    monkeypatch.setenv("SDV2_FAKE_CUDA_LOG", str(tmp_path / "log"))
    out, eng = stream(2, rebalance_after=0, changes=CHANGES)
    util = eng.stats().rank_utilisation
    eng.stop()
    logs = [cuda_fakes.LOG, json.loads((tmp_path / "log.rank1").read_text())]
    jobs = 2 * 20  # Stream-Batch: one job per slot and chunk, at least
    for rank, log in enumerate(logs):
        assert log["synchronize"] == [], (rank, log["synchronize"][:5])
        assert log["timing_events"] >= 2 * jobs, rank  # a start and an end event around each job's work
        send_streams = {s["stream"] for s in log["sends"]}
        assert len(log["sends"]) >= jobs and len(send_streams) == 1 and "compute" not in send_streams, rank
        assert all(s["after"] == "compute" for s in log["sends"]), rank  # ordered after the compute, by an event
    recv_streams = {r["stream"] for r in logs[1]["receives"]}  # rank 1 (rank 0 receives on its gloo thread)
    assert len(recv_streams) == 1 and not recv_streams & ({"compute"} | send_streams)
    # the activations rank 1 received (4 tensors a job) were allocated by the receive stream, handed to compute
    assert len(logs[1]["handed_to"]) >= 4 * jobs and set(logs[1]["handed_to"]) == {"compute"}
    assert len(util) == 2 and all(0.0 < u <= 1.0 for u in util), util  # from the events' elapsed times
    worst, mean = compare(single, out)
    assert worst <= 4 and mean < 0.05, (worst, mean)


def test_rebalance_moves_kv_layers_only_between_neighbours(monkeypatch):
    """A move that skips a rank (blocks 2-3 from rank 2 to rank 0) is relayed through rank 1; every rank's layers
    end where the new ranges say, and no two ranks that are not neighbours exchange anything."""
    import dataclasses
    import queue
    import threading

    from sdv2_studio.engine.config import CacheConfig, get_preset
    from sdv2_studio.engine.kv_cache import KVCache

    old, new = [range(0, 1), range(1, 2), range(2, 6)], [range(0, 4), range(4, 5), range(5, 6)]
    assert par.block_transfers(old, new) == [(1, 0, range(1, 2)), (2, 0, range(2, 4)), (2, 1, range(4, 5))]
    assert par.neighbour_hops(old, new) == [(1, 0, range(1, 2)), (2, 1, range(2, 4)), (1, 0, range(2, 4)),
                                            (2, 1, range(4, 5))]
    cfg = dataclasses.replace(get_preset("tiny"), num_layers=6)

    def caches(ranges):  # each block's layers hold its own number
        out = []
        for rg in ranges:
            c = KVCache(cfg, CacheConfig(), 2, 4, device="cpu", dtype=torch.float32, blocks=rg)
            for b in rg:
                for t in c.export_layers(range(b, b + 1)):
                    t.fill_(b + 1)
            out.append(c)
        return out

    links = collections.defaultdict(queue.Queue)  # (src, dst) -> tensors in flight
    me = threading.local()
    talks = []

    def send(t, dst):
        talks.append((me.rank, dst))
        links[me.rank, dst].put(t.clone())

    def recv(t, src):
        t.copy_(links[src, me.rank].get(timeout=30))

    monkeypatch.setattr(par.dist, "send", send)
    monkeypatch.setattr(par.dist, "recv", recv)
    def rank_main(rank, cache, a, b, moved, errors):
        me.rank = rank
        try:
            moved[rank] = par.move_kv_layers(cache, a, b, rank)
        except BaseException as e:
            errors.append(e)

    for a, b in ((old, new), (new, old)):
        moved, errors = {}, []
        threads = [threading.Thread(target=rank_main, args=(r, c, a, b, moved, errors))
                   for r, c in enumerate(caches(a))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and len(moved) == 3, errors
        for rank, (cache, gained) in moved.items():
            assert cache.blocks == b[rank] and gained == [x for x in b[rank] if x not in a[rank]]
            for x in b[rank]:
                assert all(bool((t == x + 1).all()) for t in cache.export_layers(range(x, x + 1))), (rank, x)
    assert talks and all(abs(src - dst) == 1 for src, dst in talks), talks
