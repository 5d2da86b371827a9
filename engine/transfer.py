"""What crosses between host and device in the hot path, and how.

A GPU stays busy only if the host does not wait for it inside a chunk and never makes it wait. So per chunk exactly
two copies cross the bus (engine/sync_check.py proves it for a whole steady-state chunk, on fake tensors of a
non-host device). The one wait is explicit, at the chunk's end, for the styled frames the caller takes:

* in: the chunk's uint8 frames, one non_blocking copy from a pinned staging buffer (`FrameUploader`), converted to
  float on the device (4x fewer bytes than uploading float32, and no pageable-memory copy, which blocks the host);
* out: the styled uint8 frames, one non_blocking copy into a pinned buffer and an explicit wait on its event
  (`FrameDownloader`): no implicit synchronisation, so `torch.cuda.set_sync_debug_mode("error")` stays quiet.

Constants the hot path needs (latent statistics, ...) are uploaded once per device (`device_constant`), never per
call: `torch.tensor(list, device=cuda)` is a blocking copy from pageable memory.
"""

from __future__ import annotations

import numpy as np
import torch

_CONSTANTS: dict[tuple, torch.Tensor] = {}


def device_constant(values, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 1-D tensor of `values` (numbers) on `device`, uploaded on first use and reused after (treat it as
    read-only)."""
    key = (tuple(float(v) for v in values), str(torch.device(device)), dtype)
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.tensor(key[0], dtype=dtype).to(device)
    return t


def unit_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> float32 [1, 3, T, H, W] in [-1, 1] (x / 127.5 - 1), on the frames' device."""
    return frames.permute(3, 0, 1, 2).unsqueeze(0).to(torch.float32) / 127.5 - 1.0


class FrameUploader:
    """Host uint8 frames [T, H, W, 3] -> float32 [1, 3, T, H, W] in [-1, 1] on `device`, a device that is not the
    host (on the CPU the pipeline uses its host frames as they are).

    On a CUDA device the frames go through a pinned staging buffer with one non_blocking copy; two buffers per
    shape alternate, and a buffer is refilled only after the event recorded behind its last copy has passed, so the
    host never overwrites a copy still in flight (and in steady state never waits: that copy ended a chunk ago).
    Without CUDA (the fake device of the sync check) the buffers are ordinary host memory.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda" and torch.cuda.is_available()
        self._buffers: dict[tuple, list[torch.Tensor]] = {}
        self._events: dict[int, torch.cuda.Event] = {}
        self._turn = 0

    @property
    def staging(self) -> list[torch.Tensor]:
        """Every staging buffer (the sync check allows uploads from these alone)."""
        return [b for bufs in self._buffers.values() for b in bufs]

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(frames))
        bufs = self._buffers.get(host.shape)
        if bufs is None:
            bufs = self._buffers[host.shape] = [torch.empty(host.shape, dtype=torch.uint8, pin_memory=self.pinned)
                                                for _ in range(2)]
        self._turn ^= 1
        buf = bufs[self._turn]
        event = self._events.get(id(buf))
        if event is not None:
            event.synchronize()  # the copy out of this buffer (two chunks ago) has finished
        buf.copy_(host)
        on_device = buf.to(self.device, non_blocking=True)
        if self.pinned:
            event = self._events[id(buf)] = torch.cuda.Event()
            event.record()
        return unit_range(on_device)


class FrameDownloader:
    """Styled uint8 frames [T, H, W, 3] on the device -> a host numpy array of the caller's own.

    On CUDA: one non_blocking copy into a pinned buffer (one per shape), an explicit wait on the event recorded
    behind it (the frames are needed now; explicit, so sync debugging reports nothing), then a host copy the
    caller may keep while the buffer is reused. Elsewhere: the tensor's own memory (CPU) or `.cpu()`.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda" and torch.cuda.is_available()
        self._buffers: dict[tuple, torch.Tensor] = {}

    def __call__(self, frames: torch.Tensor) -> np.ndarray:
        if frames.device.type == "cpu":
            return frames.numpy()
        if not self.pinned:
            return frames.cpu().numpy()
        buf = self._buffers.get(tuple(frames.shape))
        if buf is None:
            buf = self._buffers[tuple(frames.shape)] = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
        buf.copy_(frames, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        event.synchronize()
        return buf.numpy().copy()
