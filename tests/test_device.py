"""The dtype "auto" picks per device and what a process sets up for its CUDA device (no GPU needed: torch.cuda's
answers are monkeypatched, as a T4, V100, A100, RTX 4090 or H100 would give them)."""

from __future__ import annotations

import pytest
import torch
from sdv2_studio.engine.api import resolve_dtype
from sdv2_studio.engine.device import auto_dtype, native_bf16, use_device
from sdv2_studio.engine.model import FP32_KEYS, keep_fp32
from sdv2_studio.engine.models import tiny_bundle

GPUS = {"V100": (7, 0), "T4": (7, 5), "A100": (8, 0), "RTX 4090": (8, 9), "H100": (9, 0)}


@pytest.fixture
def gpu(monkeypatch):
    """Makes cuda:0 look like the named GPU; returns the list of set_device calls."""
    calls = []

    def as_gpu(name: str) -> list:
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: GPUS[name])
        monkeypatch.setattr(torch.cuda, "set_device", calls.append)
        return calls

    return as_gpu


@pytest.mark.parametrize("name", GPUS)
def test_auto_is_bf16_only_where_the_gpu_has_it_natively(gpu, name):
    gpu(name)
    cuda = torch.device("cuda:0")
    want = torch.bfloat16 if GPUS[name] >= (8, 0) else torch.float16
    assert native_bf16(cuda) == (want == torch.bfloat16)
    assert auto_dtype(cuda) == resolve_dtype("auto", cuda) == want
    assert resolve_dtype("bfloat16", cuda) == torch.bfloat16  # an explicit choice is kept


def test_auto_is_float32_on_the_cpu():
    assert auto_dtype(torch.device("cpu")) == resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert not native_bf16(torch.device("cpu"))


@pytest.mark.parametrize("name", ["T4", "A100"])
def test_use_device_sets_the_device_and_tf32_from_ampere(gpu, name):
    calls = gpu(name)
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32  # a process-wide flag (cuBLAS settings are no plain attributes: restored by hand)
    try:
        matmul.allow_tf32 = False
        use_device(torch.device("cuda:0"))
        assert calls == [torch.device("cuda:0")]
        assert matmul.allow_tf32 == (GPUS[name] >= (8, 0))
        use_device(torch.device("cpu"))  # a CPU process changes nothing
        assert calls == [torch.device("cuda:0")]
    finally:
        matmul.allow_tf32 = before


def test_fp16_model_on_a_t4_keeps_the_fp32_islands(gpu):
    gpu("T4")
    dtype = resolve_dtype("auto", torch.device("cuda:0"))
    assert dtype == torch.float16
    bundle = tiny_bundle(dtype=dtype)  # built on the CPU: the dtypes are what a T4 would get
    params = dict(bundle.dit.named_parameters())
    islands = {n for n in params if keep_fp32(n)}
    for key in FP32_KEYS:  # every island kind is present in the tiny model, so none is checked vacuously
        assert any(key in n for n in islands), key
    assert all(params[n].dtype == torch.float32 for n in islands)
    assert all(p.dtype == torch.float16 for n, p in params.items() if n not in islands)
    assert all(p.dtype == torch.float32 for p in bundle.vae.parameters())  # the VAE runs fp32 when the DiT is fp16
