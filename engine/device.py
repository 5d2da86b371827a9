"""What a process sets up once for its compute device, and the dtype "auto" means there.

* `auto_dtype`: bfloat16 on GPUs that compute it natively (compute capability >= 8.0: Ampere, Ada, Hopper,
  Blackwell); float16 on older GPUs (T4 7.5, V100 7.0), which only emulate bf16 (slowly) but have fp16 tensor
  cores; float32 on a CPU. In every dtype the fp32 islands (engine/model.py FP32_KEYS: time embedding, modulation,
  q/k norms, norm3) keep float32 weights and math (`cast_model`).
* `use_device`: called once by every process that computes on `device` (the single-device engine in
  `api.resolve_device`, every pipeline rank including rank 0): makes a CUDA device the process's current one
  (so that nothing opens a context on cuda:0 behind our back) and lets the remaining fp32 matmuls (the fp32
  islands, a float32 model) use TF32 tensor cores on Ampere and newer (`torch.backends.cuda.matmul.allow_tf32`,
  the CUDA side of `torch.set_float32_matmul_precision("high")`: 10-bit mantissa products, fp32 accumulation;
  cuDNN convolutions use TF32 by default). CPU matmuls are left as they are (fp32).
"""

from __future__ import annotations

import torch

NATIVE_BF16 = (8, 0)  # the first compute capability with bf16 tensor cores (A100); also where TF32 starts


def capability(device: torch.device) -> tuple[int, int]:
    """The compute capability of a CUDA device (its index, else the current device)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index))


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: CUDA compute capability >= 8.0, which is what
    `torch.cuda.is_bf16_supported(including_emulation=False)` answers for the current device; ROCm GPUs: torch's
    answer."""
    if device.type != "cuda":
        return False
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    return capability(device) >= NATIVE_BF16


def auto_dtype(device: torch.device) -> torch.dtype:
    """The dtype `--dtype auto` picks on `device` (see the module docstring)."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if native_bf16(device) else torch.float16


def use_device(device: torch.device) -> None:
    """Set up this process for computing on `device` (once, where the device is picked): a CUDA device becomes
    the current device and, from compute capability 8.0, fp32 matmuls may use TF32."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    if capability(device) >= NATIVE_BF16:
        torch.backends.cuda.matmul.allow_tf32 = True
