"""Recording stand-ins for the parts of torch.cuda the pipeline ranks use (streams, events, synchronize, set_device,
Tensor.record_stream), so that their CUDA code path runs on a CPU over gloo and can be checked: `install(setattr)`
swaps them in (and makes engine.parallel treat its devices as CUDA); `LOG` is what this process recorded. Ranks
spawned by the engine run `stage_main`, which installs the fakes in the child and writes its LOG to
`$SDV2_FAKE_CUDA_LOG.rankN` when the rank ends."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time

import sdv2_studio.engine.parallel as par
import torch
import torch.distributed as dist

LOG: dict = {}
_local = threading.local()
_real_stage_main = par.stage_main
_real_isend, _real_irecv = dist.isend, dist.irecv
_numbers = itertools.count(1)


def reset() -> None:
    LOG.clear()
    LOG.update(synchronize=[], set_device=[], timing_events=0, sends=[], receives=[], handed_to=[])


class FakeStream:
    def __init__(self, device=None, name: str = "side"):
        self.name = name
        self.waited_on: list[str] = []  # the streams whose events this stream was made to wait for, in order

    def wait_event(self, event: FakeEvent) -> None:
        self.waited_on.append(event.stream)

    def synchronize(self) -> None:
        LOG["synchronize"].append(f"stream {self.name}")


COMPUTE = FakeStream(name="compute")


def current_stream(device=None) -> FakeStream:
    return getattr(_local, "stream", COMPUTE)


@contextlib.contextmanager
def stream(s: FakeStream):
    before = current_stream()
    _local.stream = s
    try:
        yield
    finally:
        _local.stream = before


class FakeEvent:
    def __init__(self, enable_timing: bool = False, **_):
        self.timing, self.stream, self.t = enable_timing, None, None
        LOG["timing_events"] += enable_timing

    def record(self, s: FakeStream | None = None) -> None:
        self.stream, self.t = (s or current_stream()).name, time.perf_counter()

    def query(self) -> bool:
        return True  # CPU work has finished when the host gets here

    def synchronize(self) -> None:
        LOG["synchronize"].append("event")

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.timing and end.timing, "elapsed_time needs timing events"
        return (end.t - self.t) * 1000


def _on(kind: str, call):
    def wrapped(tensor, peer, *a, **kw):
        s = current_stream()
        LOG[kind].append({"stream": s.name, "after": s.waited_on[-1] if s.waited_on else None, "peer": peer})
        return call(tensor, peer, *a, **kw)
    return wrapped


def install(setattr_) -> None:
    """Swap the fakes in with `setattr_` (pytest's monkeypatch.setattr, or the builtin in a spawned rank)."""
    reset()
    setattr_(torch.cuda, "synchronize", lambda device=None: LOG["synchronize"].append("device"))
    setattr_(torch.cuda, "set_device", lambda device: LOG["set_device"].append(str(device)))
    setattr_(torch.cuda, "Event", FakeEvent)
    setattr_(torch.cuda, "Stream", lambda device=None: FakeStream(device, name=f"stream{next(_numbers)}"))
    setattr_(torch.cuda, "stream", stream)
    setattr_(torch.cuda, "current_stream", current_stream)
    setattr_(dist, "isend", _on("sends", _real_isend))
    setattr_(dist, "irecv", _on("receives", _real_irecv))
    setattr_(torch.Tensor, "record_stream", lambda t, s: LOG["handed_to"].append(s.name))
    setattr_(par, "on_cuda", lambda device: True)


def stage_main(spec: par.StageSpec) -> None:
    """A spawned rank's entry point with the fakes installed."""
    install(setattr)
    try:
        _real_stage_main(spec)
    finally:
        with open(f"{os.environ['SDV2_FAKE_CUDA_LOG']}.rank{spec.rank}", "w") as f:
            json.dump(LOG, f)


reset()
