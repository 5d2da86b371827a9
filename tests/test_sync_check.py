"""GPU readiness without a GPU: a steady-state chunk of the whole pipeline never makes the host wait for the device
(engine/sync_check.py runs it on fake tensors of a non-host device), and the check catches each kind of violation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.kv_cache import KVCache
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.engine.pipeline import LocalDenoiser, StreamPipeline
from sdv2_studio.engine.sync_check import HostSyncError, check_steady_chunk
from sdv2_studio.engine.text import PromptCache

SIZE = (64, 64)
WARMUP = 7  # first chunk (2 latent frames) + 4 one-frame chunks fill the 6-frame cache; + the Stream-Batch fill


@pytest.fixture(scope="module")
def frames():
    src = TestPatternSource(size=SIZE, fps=16)
    return np.stack([src.frame(i) for i in range(5 + 4 * (WARMUP + 2))])


def check(frames, *, batch: bool, steps: int = 2):
    bundle = tiny_bundle()  # its models become fake tensors: a fresh one per check

    def build(device):
        return StreamPipeline(bundle.dit.to(device), bundle.vae.to(device), PromptCache(bundle.text), size=SIZE,
                              controls=Controls(steps=steps), batch=batch, device=device)

    return check_steady_chunk(build, frames, warmup_chunks=WARMUP)


@pytest.mark.parametrize("batch", [True, False], ids=["stream-batch", "no-batch"])
def test_steady_chunk_is_sync_free(frames, batch):
    reports = check(frames, batch=batch)
    assert len(reports) == 2
    for r in reports:
        assert (r.uploads, r.downloads) == (1, 1)  # the frames in, the styled frames out
        assert r.ops["conv3d"] > 0 and r.ops["scaled_dot_product_attention"] > 0  # VAE and DiT both ran
        assert 0 < r.kernels < r.total
    assert reports[0].ops == reports[1].ops  # the same work every steady chunk
    print(f"{'Stream-Batch' if batch else 'no-batch'} steps 2: {reports[0].total} ops per chunk, "
          f"{reports[0].kernels} not views (kernel-launch proxy)")


def _wrap(monkeypatch, cls, name, extra, after: int):
    """Run `extra` after `cls.name` from its call number `after` on (the warm-up chunks stay clean)."""
    original, calls = getattr(cls, name), [0]

    def wrapped(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] > after:
            extra(self, *args)
        return out

    monkeypatch.setattr(cls, name, wrapped)


@pytest.mark.parametrize("inject, message", [
    (lambda self, job, *a: float(job.x.sum()), r"host sync: float\(\) of a device tensor at test_sync_check.py"),
    (lambda self, job, *a: bool((job.x > 0).any()), r"host sync: bool\(\)"),
    (lambda self, job, *a: job.x.nonzero(), r"host sync: aten::nonzero"),
    (lambda self, job, *a: job.x + torch.tensor([1.0], device=job.x.device), r"host-to-device copy of torch.tensor"),
    (lambda self, job, *a: torch.ones(2).to(job.x.device), r"host-to-device copy of a torch.float32 \(2,\) "),
    (lambda self, job, *a: job.x.cpu(), r"device-to-host copy of a torch.float32"),
], ids=["float", "bool", "nonzero", "torch.tensor-upload", "pageable-upload", "float-download"])
def test_check_catches_each_kind(frames, monkeypatch, inject, message):
    _wrap(monkeypatch, LocalDenoiser, "batch_step", inject, after=WARMUP - 1)  # one call per chunk after chunk 0
    with pytest.raises(HostSyncError, match=message):
        check(frames, batch=True)


def test_check_catches_per_call_uploads_in_the_cache(frames, monkeypatch):
    """What the KV cache did before its plan lived in device buffers: torch.tensor(list, device=...) per call."""
    _wrap(monkeypatch, KVCache, "plan", lambda self, starts, *a, **k: torch.tensor(starts, device=self.device),
          after=2 * WARMUP)  # one call per denoising step
    with pytest.raises(HostSyncError, match=r"host-to-device copy of torch.tensor\(...\) \(blocking"):
        check(frames, batch=False)
