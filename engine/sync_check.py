"""Proof, on a machine without a GPU, that a steady-state chunk reads no device value on the host and copies only
the frames in and the styled frames out.

On a GPU the fps of a streaming pipeline is decided by whether the host can queue chunk n+1 while chunk n runs.
Every host read of a device value (`.item()`, `float()`, `bool()`, `.tolist()`, an op whose output shape depends on
data such as `nonzero`) and every copy from pageable host memory stops that. `check_steady_chunk` runs a whole
`StreamPipeline` (VAE encode, noise controller, DiT against its KV cache, decode) with its device work on torch's
fake tensors of a non-host device (`FAKE_DEVICE`, below: shapes, dtypes and devices are tracked, nothing is
computed, no GPU or CUDA build needed; host work runs for real) and watches every op of the steady-state chunks:

* host reads and data-dependent ops on a device tensor fail at once, naming the line of our code that did it;
* host-to-device copies are allowed only as one non_blocking copy of uint8 frames from the pipeline's staging
  buffer (engine/transfer.py); device-to-host copies only of the uint8 styled frames;
* ops are counted (all, and those that are not views: a proxy for kernel launches per chunk).

Not covered (they need a real GPU, `sdv2 bench gpu` checks them with `torch.cuda.set_sync_debug_mode("error")`):
the branches taken only when CUDA is available (pinned staging, event waits, CUDA graphs of the compiled step),
pipeline ranks, and the eager-only check does not run the compiled step.

CUDA random generators keep their seed and offset on the host (seeding is not a sync); fake tensors cannot carry
one, so inside the check `torch.Generator(device="cuda...")` makes a host generator with the same seed semantics.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import traceback
from pathlib import Path

import numpy as np
import torch
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.pipeline import StreamPipeline
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
)
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

# The stand-in accelerator. Fake tensors can carry device "cuda:0" on a CPU-only build, but indexing one from Python
# takes a CUDA device guard that only the CUDA build has (the process aborts), so the check's fake tensors live on
# the meta device: like CUDA it is not the host (copies to and from it are uploads and downloads; no op may read
# its values), and nothing in the hot path branches on "cuda" except what needs a real GPU (pinned memory, events).
FAKE_DEVICE = torch.device("meta")
_THIS_FILE = Path(__file__).resolve()
_TORCH_DIR = Path(torch.__file__).resolve().parent
_HOST_READS = {torch.Tensor.item: "item()", torch.Tensor.tolist: "tolist()", torch.Tensor.__bool__: "bool()",
               torch.Tensor.__float__: "float()", torch.Tensor.__int__: "int()", torch.Tensor.__index__: "index",
               torch.Tensor.numpy: "numpy()", torch.Tensor.__array__: "numpy array"}
_SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique",
             "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim", "aten::repeat_interleave"}


class HostSyncError(EngineError):
    """The hot path made the host wait for the device, or copied between them where it must not."""


@dataclasses.dataclass
class ChunkReport:
    """What one chunk did on the device."""

    ops: collections.Counter  # aten op name -> calls
    kernels: int  # ops that are not views or metadata: a proxy for kernel launches
    uploads: int  # host-to-device copies (allowed: the frames)
    downloads: int  # device-to-host copies (allowed: the styled frames)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def _our_frame() -> str:
    """file:line of the innermost frame outside torch and this file (the code that did it), for the message."""
    for f in reversed(traceback.extract_stack()):
        p = Path(f.filename).resolve()
        if not p.is_relative_to(_TORCH_DIR) and p != _THIS_FILE:
            return f"{p.name}:{f.lineno} ({f.line})"
    return "an unknown place"


def _on_device(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "cpu"


class _HostReads(TorchFunctionMode):
    """Tensor methods that read device values on the host; `numpy()` of the styled frames (already on the host)
    gives zeros, as fake tensors hold no data."""

    def __init__(self, check: _Watch):
        super().__init__()
        self.check = check

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _HOST_READS.get(func)
        if name is not None and self.check.strict:
            if _on_device(args[0]):
                raise HostSyncError(f"host sync: {name} of a device tensor at {_our_frame()}")
        device = kwargs.get("device") if func in (torch.tensor, torch.as_tensor) else None
        if device is not None and torch.device(device).type != "cpu":  # host data straight to the device
            if self.check.strict:
                raise HostSyncError(f"host-to-device copy of torch.{func.__name__}(...) (blocking, from pageable "
                                    f"memory) at {_our_frame()}: keep such values in device buffers")
            # (the meta device would make a real tensor here, outside the fake mode)
            return func(*args, **{**kwargs, "device": "cpu"}).to(device)
        if func is torch.Tensor.numpy and isinstance(args[0], FakeTensor):
            return np.zeros(tuple(args[0].shape), dtype=_NP_DTYPES[args[0].dtype])
        return func(*args, **kwargs)


_NP_DTYPES = {torch.uint8: np.uint8, torch.float32: np.float32, torch.int64: np.int64, torch.bool: np.bool_}


def _host_only(args, kwargs) -> bool:
    """An op on real host tensors that creates nothing on another device."""
    device = kwargs.get("device")
    if device is not None and torch.device(device).type != "cpu":
        return False
    return not any(isinstance(a, FakeTensor) or (isinstance(a, torch.Tensor) and a.device.type != "cpu")
                   or (isinstance(a, torch.device) and a.type != "cpu") for a in pytree.tree_leaves((args, kwargs)))


class OpCounter(TorchDispatchMode):
    """Counts the aten ops run inside it, and those that make a new tensor that is not a view (a proxy for kernel
    launches: `x.to(x.dtype)` and in-place ops return an input, views launch nothing)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.kernels = 0

    def count(self, func, args, out) -> None:
        name = func._schema.name
        self.ops[name.removeprefix("aten::")] += 1
        fresh = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor) and not any(o is a for a in args)]
        if fresh and not func.is_view and not name.startswith("prim::"):
            self.kernels += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count(func, args, out)
        return out


class _Watch(OpCounter):
    """Counts ops and checks copies and data-dependent ops (under fake tensors: no data)."""

    def __init__(self, staging):
        super().__init__()
        self.staging = staging  # callable -> the tensors uploads may come from
        self.strict = False
        self.uploads = self.downloads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _host_only(args, kwargs):  # host work (text encoder, motion statistic, staging) runs for real
            with _disable_current_modes():
                return func(*args, **kwargs)
        name = func._schema.name
        if self.strict:
            if name in _SYNC_OPS:
                raise HostSyncError(f"host sync: {name} on a device tensor at {_our_frame()}")
        try:
            out = func(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException) as e:
            when = "" if self.strict else " in a warm-up chunk (fake tensors hold no data to give)"
            raise HostSyncError(f"host sync{when}: {name} needs the device's data at {_our_frame()}") from e
        if self.strict:
            self._copies(func, args, kwargs, out)
            self.count(func, args, out)
        return out

    def _copies(self, func, args, kwargs, out) -> None:
        """An op with a host input (not a 0-dim scalar, which travels as a kernel argument) and a device output is
        an upload; one with a device input and a host output is a download."""
        ins = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        outs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        copying = func._schema.name in ("aten::copy_", "aten::_to_copy", "aten::to", "aten::index_put_",
                                        "aten::index_put")  # a 0-dim host tensor is data here, not an argument
        host_in = [a for a in ins if a.device.type == "cpu" and (a.dim() > 0 or copying)]
        if host_in and any(o.device.type != "cpu" for o in outs):
            self.uploads += 1
            src = host_in[0]
            non_blocking = kwargs.get("non_blocking", False)
            if not (src.dtype == torch.uint8 and non_blocking and any(src is b for b in self.staging())):
                raise HostSyncError(f"host-to-device copy of a {src.dtype} {tuple(src.shape)} tensor "
                                    f"{'(blocking) ' if not non_blocking else ''}at {_our_frame()}: only the frames "
                                    "may be uploaded, once per chunk, from the staging buffer (engine/transfer.py)")
        dev_in = [a for a in ins if a.device.type != "cpu"]
        if dev_in and any(o.device.type == "cpu" for o in outs):
            self.downloads += 1
            if dev_in[0].dtype != torch.uint8:
                raise HostSyncError(f"device-to-host copy of a {dev_in[0].dtype} {tuple(dev_in[0].shape)} tensor "
                                    f"at {_our_frame()}: only the styled uint8 frames may come back")

    def take(self) -> ChunkReport:
        r = ChunkReport(self.ops, self.kernels, self.uploads, self.downloads)
        self.ops, self.kernels, self.uploads, self.downloads = collections.Counter(), 0, 0, 0
        return r


@contextlib.contextmanager
def _host_generators():
    real = torch.Generator

    class Generator(real):  # isinstance(g, torch.Generator) keeps working
        def __new__(cls, device="cpu"):
            return real("cpu" if torch.device(device).type in ("cuda", FAKE_DEVICE.type) else device)

    torch.Generator = Generator
    try:
        yield
    finally:
        torch.Generator = real


def check_steady_chunk(build_pipeline, frames: np.ndarray, *, warmup_chunks: int, checked_chunks: int = 2
                       ) -> list[ChunkReport]:
    """Build a pipeline on the fake device with `build_pipeline(device)` (it moves its models there; they become
    fake tensors for good, so pass models nothing needs afterwards), run `warmup_chunks` chunks unchecked (first
    chunk, filling the KV cache, first evictions) and then `checked_chunks` chunks under the checks above.
    `frames`: uint8 [T, H, W, 3] host frames, enough for all chunks. Returns one report per checked chunk; raises
    HostSyncError at the first violation."""
    reports: list[ChunkReport] = []
    with FakeTensorMode(allow_non_fake_inputs=True), _host_generators():
        built: list[StreamPipeline] = []
        watch = _Watch(lambda: built[0]._upload.staging)
        with _HostReads(watch), watch:
            with torch.no_grad():  # parameters move outside inference mode (fake tensors cannot be made there)
                built.append(pipe := build_pipeline(FAKE_DEVICE))
            i = 0
            for chunk in range(warmup_chunks + checked_chunks):
                n = pipe.frames_needed
                if i + n > len(frames):
                    raise ValueError(f"need more than {len(frames)} frames for {warmup_chunks + checked_chunks} "
                                     "chunks")
                watch.strict = chunk >= warmup_chunks
                if watch.strict and not all(e >= pipe.cache.S for e in pipe.cache.local_end):
                    raise ValueError(f"{warmup_chunks} warm-up chunks leave the KV cache filling: not steady yet")
                pipe.process(frames[i:i + n])
                i += n
                if watch.strict:
                    report = watch.take()
                    if report.uploads != 1:
                        raise HostSyncError(f"a steady chunk made {report.uploads} uploads; exactly one (the frames) "
                                            "is expected")
                    reports.append(report)
        pipe.close()
    return reports
