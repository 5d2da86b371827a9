"""Flow-matching timesteps, video-to-video noising and the motion-aware noise controller.

Conventions (StreamDiffusionV2 upstream, see the reference notes sections 1, 6 and "Behaviour as executed"):

* The DiT predicts a flow ``v = noise - x0``. For a timestep ``t`` with noise level ``sigma(t)``:
  ``x_t = (1 - sigma) * x0 + sigma * noise`` and ``x0 = x_t - sigma * v``.
* Timesteps are raw integers (700, 500, 400, 200). ``sigma(t)`` is NOT ``t / 1000``: ``t`` is matched to
  the NEAREST timestep of the shifted training grid (shift 8, 1000 training steps) and that grid point's
  sigma is used. E.g. t = 700 -> grid timestep 700.2324, sigma 0.7002323865890503.
* Latents are ``[B, C, F, H, W]``; a timestep tensor is a scalar, ``[B]`` (one per sample) or ``[B, F]``
  (one per frame) and is broadcast accordingly.
* The first timestep of every chunk comes from `MotionNoiseController`: ``int(1000 * s) - 100`` where ``s``
  is the noise scale it tracks (0.8 -> 700 on a static scene, down to ~600 under heavy motion).

Lookups never synchronise with the device (no ``.item()``): integer timesteps index a precomputed table
``sigma_for_t[0 .. train_steps]``; the tables are copied once per device and kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sdv2_studio.engine.config import DEFAULT_TIMESTEPS  # the step list (torch-free: Controls derives MAX_STEPS)
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.transfer import unit_range

# -- flow-matching grid --------------------------------------------------------------------------------------


class FlowMatchGrid:
    """The shifted flow-matching sigma grid of training, used to turn integer timesteps into noise levels.

    Built like upstream's scheduler: ``sigmas = linspace(sigma_max, sigma_min, train_steps + 1)[:-1]``
    (float32, torch's default; with ``extra_one_step=False`` the linspace has ``train_steps`` points and
    nothing is dropped), then ``s' = shift * s / (1 + (shift - 1) * s)`` and ``timesteps = s' * train_steps``,
    all in float32. Those float32 values are what upstream looks up, so they are kept as they are; x0
    conversions then upcast the float32 sigma to float64. This reproduces upstream's sigma 0.7002323865890503
    for t = 700 bit for bit; a float64 grid gives ...780, a float64 shift of the float32 grid ...912.
    """

    def __init__(self, shift: float = 8.0, train_steps: int = 1000, sigma_min: float = 0.0,
                 extra_one_step: bool = True, sigma_max: float = 1.0):
        if train_steps < 1:
            raise EngineError(f"flow-matching grid: train_steps must be >= 1, not {train_steps}")
        if shift <= 0:
            raise EngineError(f"flow-matching grid: shift must be > 0, not {shift}")
        if not 0.0 <= sigma_min < sigma_max <= 1.0:
            raise EngineError(f"flow-matching grid: need 0 <= sigma_min < sigma_max <= 1 "
                              f"(got {sigma_min}, {sigma_max})")
        self.shift, self.train_steps = float(shift), int(train_steps)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.extra_one_step = extra_one_step

        n = train_steps + 1 if extra_one_step else train_steps
        s = torch.linspace(sigma_max, sigma_min, n, dtype=torch.float32)
        if extra_one_step:
            s = s[:-1]
        s = self.shift * s / (1 + (self.shift - 1) * s)
        self.sigmas = s  # [train_steps] float32, decreasing from sigma_max
        self.timesteps = s * self.train_steps  # [train_steps] float32

        # Nearest grid point of every integer timestep 0..train_steps. Compared in float64; for the default
        # grid this equals a float32 comparison (checked: no integer lies within 8e-4 of a tie).
        t_int = torch.arange(self.train_steps + 1, dtype=torch.float64)
        self.nearest = (self.timesteps.double()[None, :] - t_int[:, None]).abs().argmin(dim=1)  # [T+1] int64
        self.sigma_for_t = self.sigmas[self.nearest]  # [T+1] float32 (upstream's values)
        self._device_tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _tables(self, device) -> dict[str, torch.Tensor]:
        """The lookup tables on `device`, copied there once and kept."""
        device = torch.device(device)
        tabs = self._device_tables.get(device)
        if tabs is None:
            tabs = {"sigma_for_t": self.sigma_for_t.to(device), "nearest": self.nearest.to(device),
                    "grid64": self.timesteps.double().to(device), "timesteps": self.timesteps.to(device),
                    "sigmas": self.sigmas.to(device)}
            self._device_tables[device] = tabs
        return tabs

    def grid_index(self, t: torch.Tensor | int | float, device=None) -> torch.Tensor:
        """Index of the nearest grid timestep (argmin |grid - t|, first on ties), same shape as `t`."""
        t = _as_tensor(t, device)
        tabs = self._tables(t.device)
        if not t.is_floating_point():
            return tabs["nearest"][t.clamp(0, self.train_steps)]
        grid = tabs["grid64"]
        return (grid.view(*([1] * t.dim()), -1) - t.double().unsqueeze(-1)).abs().argmin(dim=-1)

    def sigma(self, t: torch.Tensor | int | float, device=None) -> torch.Tensor:
        """float32 sigma of the nearest grid timestep, same shape as `t`.

        Integer `t` (any int dtype, or a Python int) is a gather from ``sigma_for_t``; values outside
        0..train_steps are clamped, which selects the same grid point as the nearest-neighbour rule. Floating
        `t` is matched against the grid directly (argmin in float64), as upstream does for arbitrary values.
        """
        if isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)):  # a view: no upload
            return self._tables(device or "cpu")["sigma_for_t"][min(max(int(t), 0), self.train_steps)]
        t = _as_tensor(t, device)
        tabs = self._tables(t.device)
        if not t.is_floating_point():
            return tabs["sigma_for_t"][t.clamp(0, self.train_steps)]
        return tabs["sigmas"][self.grid_index(t)]

    def grid_timestep(self, t: torch.Tensor | int | float, device=None) -> torch.Tensor:
        """float32 grid timestep nearest to `t` (700 -> 700.2324)."""
        t = _as_tensor(t, device)
        return self._tables(t.device)["timesteps"][self.grid_index(t)]

    def to_x0(self, flow: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x0 = x_t - sigma(t) * flow, computed in float64 and returned in x_t's dtype.

        flow, x_t: [B, C, F, H, W] (or any shape with the batch first); t: scalar, [B] or [B, F].
        """
        sigma = _broadcast(self.sigma(t, x_t.device).double(), x_t)
        return (x_t.double() - sigma * flow.double()).to(x_t.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """(1 - sigma(t)) * x0 + sigma(t) * noise in the noise's dtype (re-noising an x0 prediction to t).

        The mix is computed in float32 at least (upstream's float32 sigma promotes bf16 inputs) and then cast.
        """
        sigma = self.sigma(t, noise.device)
        dt = torch.promote_types(torch.promote_types(x0.dtype, noise.dtype), torch.float32)
        sigma = _broadcast(sigma.to(dt), noise)
        return ((1 - sigma) * x0.to(dt) + sigma * noise.to(dt)).to(noise.dtype)


def _as_tensor(t, device=None) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t if device is None else t.to(device, non_blocking=True)
    if isinstance(t, (bool, np.bool_)):
        raise TypeError("timestep must be a number or tensor, not bool")
    return torch.as_tensor(t, device=device)


def _broadcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample [B] or per-frame [B, F] values -> broadcastable against x [B, C, F, H, W]."""
    if v.dim() == 0:
        return v
    if v.dim() == 1:  # [B]
        return v.view(v.shape[0], *([1] * (x.dim() - 1)))
    if v.dim() == 2 and x.dim() == 5:  # [B, F] -> [B, 1, F, 1, 1]
        return v.view(v.shape[0], 1, v.shape[1], 1, 1)
    raise EngineError(f"timestep shape {tuple(v.shape)} does not fit latents {tuple(x.shape)}; "
                      "pass a scalar, [B] or [B, F]")


# -- steps and v2v noising -----------------------------------------------------------------------------------


def denoising_steps(steps: int, base: Sequence[int] = DEFAULT_TIMESTEPS) -> list[int]:
    """The first `steps` timesteps of `base` (1 -> [700], 2 -> [700, 500], ... 4 -> [700, 500, 400, 200]).

    The first entry is replaced per chunk by the motion controller's ``first_t``.
    """
    n = len(base)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= n:
        raise EngineError(f"denoising steps must be an integer from 1 to {n}, not {steps!r}")
    return [int(t) for t in base[:steps]]


def v2v_noise(latent: torch.Tensor, noise: torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
    """The video-to-video start point: ``s * noise + (1 - s) * latent`` (a linear mix with noise scale s).

    Note that the model is then told the controller's ``first_t`` (sigma ~= s - 0.1), a bit below the noise
    actually added; that is upstream's behaviour.
    """
    return s * noise + (1 - s) * latent


# -- motion-aware noise controller ---------------------------------------------------------------------------


def frames_from_uint8(frames) -> torch.Tensor:
    """Engine frames (uint8 H x W x 3 numpy arrays: one array [T, H, W, 3] or a list of [H, W, 3]) ->
    float32 tensor [1, 3, T, H, W] in [-1, 1] (x / 127.5 - 1), the layout of `MotionNoiseController` and
    the VAE.
    """
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise EngineError("no frames given")
        frames = np.stack([np.asarray(f) for f in frames])
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise EngineError(f"frames must be H x W x 3 (RGB) images, got an array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise EngineError(f"frames must be uint8 RGB images, got dtype {arr.dtype}")
    return unit_range(torch.from_numpy(np.ascontiguousarray(arr)))


@dataclass(eq=False)  # holds a tensor; identity comparison
class MotionNoiseController:
    """Motion-aware noise scale (upstream's ``compute_noise_scale_and_step``), one instance per stream.

    Per chunk of pixel frames in [-1, 1], layout ``[B, 3, T, H, W]`` (the VAE's; use `frames_from_uint8` or
    `update_uint8` for engine frames):

    1. ``d_t = sqrt(mean over (B, C, H, W) of (x_t - x_{t-1})^2)`` for every frame of the chunk, with the
       previous chunk's last frame prepended (the first chunk after a reset only has its internal
       differences; a single-frame first chunk counts as motion 0);
    2. ``motion = clip(max_t d_t / motion_scale, 0, 1)``;
    3. ``s = ema * (s0 - motion_drop * motion) + (1 - ema) * s_prev`` (s ranges over [s0 - motion_drop, s0]);
    4. ``first_t = int(1000 * s) - t_offset`` (700 for a static scene at s0 = 0.8, ~600 under full motion).

    `s_prev` starts at `s0`. Changing `s0` live (`set_s0`, or assigning the field) keeps `s_prev`, so the
    scale glides to the new value through the EMA; `reset()` starts over (new clip / new stream).
    The motion statistic is computed in float32 and read back to the host once per chunk (`first_t` is a host
    int); feed CPU frames (as the engine has them) to keep that free.
    """

    s0: float = 0.8  # initial / maximum noise scale (the user's "noise scale" setting)
    motion_scale: float = 0.2  # RMS frame difference that counts as full motion
    ema: float = 0.9  # weight of the new value in the EMA
    motion_drop: float = 0.1  # s_min = s0 - motion_drop
    t_offset: int = 100  # first_t = int(t_scale * s) - t_offset
    t_scale: int = 1000
    s_prev: float = field(init=False)
    last_motion: float = field(init=False, default=0.0)
    _prev_frame: torch.Tensor | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self._check_s0(self.s0)
        if self.motion_scale <= 0:
            raise EngineError(f"motion_scale must be > 0, not {self.motion_scale}")
        if not 0.0 <= self.ema <= 1.0:
            raise EngineError(f"noise EMA weight must be in [0, 1], not {self.ema}")
        if self.motion_drop < 0:
            raise EngineError(f"motion_drop must be >= 0, not {self.motion_drop}")
        self.reset()

    @staticmethod
    def _check_s0(s0: float) -> None:
        if not 0.0 < s0 <= 1.0:
            raise EngineError(f"noise scale must be in (0, 1], not {s0}; 0.8 is the default")

    def reset(self) -> None:
        """Forget the previous frame and restart the EMA at s0."""
        self.s_prev = float(self.s0)
        self.last_motion = 0.0
        self._prev_frame = None

    def set_s0(self, s0: float) -> None:
        """Change the noise scale live; the EMA state is kept so the change is smooth."""
        self._check_s0(s0)
        self.s0 = float(s0)

    @property
    def first_t(self) -> int:
        """First timestep for the current `s_prev` (before any update: the static-scene value)."""
        return self._timestep(self.s_prev)

    def _timestep(self, s: float) -> int:
        return max(0, int(self.t_scale * s) - self.t_offset)

    def motion(self, frames: torch.Tensor, prev_last_frame: torch.Tensor | None = None) -> float:
        """clip(max_t d_t / motion_scale, 0, 1) for `frames` [B, 3, T, H, W]; `prev_last_frame`
        [B, 3, H, W] or [B, 3, 1, H, W] is prepended if given. Stateless."""
        if frames.dim() != 5:
            raise EngineError("motion controller: frames must be [B, 3, T, H, W], "
                              f"got shape {tuple(frames.shape)}")
        x = frames.to(torch.float32)
        if prev_last_frame is not None:
            p = prev_last_frame.to(device=x.device, dtype=torch.float32)
            if p.dim() == 4:
                p = p.unsqueeze(2)
            if p.shape[:2] != x.shape[:2] or p.shape[3:] != x.shape[3:] or p.shape[2] != 1:
                raise EngineError(f"motion controller: previous frame {tuple(prev_last_frame.shape)} "
                                  f"does not match frames {tuple(frames.shape)}")
            x = torch.cat([p, x], dim=2)
        if x.shape[2] < 2:
            return 0.0
        diff = x[:, :, 1:] - x[:, :, :-1]
        d = diff.square().mean(dim=(0, 1, 3, 4)).sqrt()  # [T']
        return float((d.max() / self.motion_scale).clamp(0.0, 1.0))

    def update(self, frames: torch.Tensor, prev_last_frame: torch.Tensor | None = None) -> tuple[float, int]:
        """Feed one chunk of pixel frames [B, 3, T, H, W] in [-1, 1]; returns (s, first_t) for this chunk.

        The previous chunk's last frame is remembered; pass `prev_last_frame` to override it (e.g. when frames
        were dropped). After `reset()` the first chunk uses only its internal differences.
        """
        prev = prev_last_frame if prev_last_frame is not None else self._prev_frame
        m = self.motion(frames, prev)
        # (1 - ema) rounded so that ema = 0.9 gives exactly 0.1 as in upstream's literal formula
        s = self.ema * (self.s0 - self.motion_drop * m) + round(1.0 - self.ema, 12) * self.s_prev
        self.s_prev, self.last_motion = s, m
        self._prev_frame = frames[:, :, -1:].detach().to(torch.float32).clone()
        return s, self._timestep(s)

    def update_uint8(self, frames) -> tuple[float, int]:
        """`update` for engine frames: uint8 H x W x 3 arrays (a [T, H, W, 3] array or a list)."""
        return self.update(frames_from_uint8(frames))
