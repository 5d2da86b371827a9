"""SLO-aware scheduling for one stream (pure logic: no Qt, no torch, injectable clocks).

``SLOScheduler`` picks the execution plan of the next chunk so that the stream meets a throughput target
(``target_fps``) and a per-frame latency budget (seconds from a frame entering the engine to its styled frame
being ready). Steady delivery of the bursty output to live outputs is the pacer's job (``engine.io.paced``).

What the scheduler adapts
-------------------------
A ``Plan`` is ``(batch, steps, size, chunk_frames)``:

* ``batch``: Stream-Batch (one DiT forward over ``steps`` slots per chunk; each call finishes one chunk, ``steps - 1``
  chunks late) or no-batch (the steps of a chunk one after another on one slot: lower latency, less memory).
  At 1 step both are the same pipeline; the plan then keeps the user's preferred mode so no switch is logged.
* ``chunk_frames``: latent frames per chunk, 1 or 2 (4 or 8 pixel frames), as upstream's ``--target_fps`` jump:
  bigger chunks amortise the per-forward fixed cost (weights traffic) and raise throughput, at one chunk more fill.
* degradation, in this order: fewer ``steps`` (down to 1), then a smaller ``size`` from a ladder (by default the
  user's size scaled by 1, 7/8, 3/4, 5/8, 1/2, each side rounded to a multiple of 16, so 512x512 -> 448x448 ->
  384x384 -> 320x320 -> 256x256 and the aspect ratio is kept to within one rounding step).
  Recovery goes the other way round as specified: more steps back up to the user's choice, then resolution.

The plan never exceeds the user's caps: steps <= the requested steps, size <= the requested size (a ladder rung),
Stream-Batch only if the user allowed it (it multiplies KV-cache memory by the number of steps), chunk_frames from
``SLOConfig.chunk_frames``. Among the plans of one quality level ``(steps, size)`` the preference order is
(preferred mode, 1 latent frame), (other mode, 1), (preferred mode, 2), (other mode, 2).

Cost model (per chunk compute time)
-----------------------------------
Structural units of a plan, with ``r = pixels / pixels(user size)`` and ``F`` latent frames per chunk::

    units = fixed_fraction * forwards + steps * F * r + vae_fraction * F * r
    forwards = 1 (Stream-Batch: one forward at batch = steps)   or   steps (no-batch: one forward per step)

i.e. every DiT forward pays a fixed cost (weights read once: the paper's memory-bound ``L(T, B) ~ (A(T, B) +
P_model) / BW`` with A linear in B*T), token work is linear in steps x frames x pixels (attention's quadratic part
is ignored), and the VAE encode + decode is linear in frames x pixels. The paper's 1-GPU H100 figures with and without
Stream-Batch (1.3B, 1-4 steps, 14 numbers) fit this form to within 1.6 %: per chunk at 512x512 fixed 39 ms + 18 ms per
step + VAE 94 ms (fixed 2.2 and VAE 5.3 token passes), at 832x480 28 + 30 per step + 138 ms (0.9 and 4.6); the
priors ``fixed_fraction = 1.5`` and ``vae_fraction = 5.0`` sit in between. Predicted cost::

    cost(plan) = load * units(plan) * correction(plan)

``load`` (seconds per unit) tracks the machine's current speed; ``correction(plan)`` is the plan's measured deviation
from the structural model (1 for the first plan measured). A plan never tried borrows the correction of the most
similar measured plan. On the first ``learn_samples`` measurements of each visit to a plan only its correction is
fitted (the load is held; the estimate is blended with earlier visits), provided the load was *stable* when the visit
began (the last ``learn_samples`` load estimates within ``stable_tolerance``); otherwise, and afterwards, measurements
only update ``load`` (EMA, ``cost_alpha``). So a load spike measured on a known plan moves the prediction of every
plan, measured plans keep their own calibration, and a plan entered while the load is still settling does not absorb
the change into its correction. Per-plan EMAs of the raw cost are kept for the stats.

Latency model (worst frame of a chunk; P = pixel frames per chunk, period = P / target_fps)::

    fill = (P - 1) / target_fps                                  # the chunk's first frame waits for its last one
    no-batch:     latency = fill + cost
    Stream-Batch: latency = fill + (steps - 1) * max(period, cost) + cost
    utilisation   = cost / period                                # must be <= 1 to sustain target_fps
    load factor   = max(utilisation, latency / latency_budget)   # a plan "fits" when this is <= a margin

Decisions (made in ``observe``; ``next_plan`` only hands out the current plan)
-----------------------------------------------------------------------------
A chunk *misses* when the caller says so, when its measured latency exceeds the budget, or when its compute time
exceeds its period by more than ``throughput_tolerance`` (the stream cannot keep up). When the caller also reports
``wait_s``, the part of the latency spent in the input queue behind earlier chunks (a backlog), latency misses are
judged on ``latency_s - wait_s``: a backlog left by an earlier, slower plan drains on its own and must not push the
scheduler further down (it is counted as ``backlog_misses``); a plan that cannot keep up shows as throughput misses.
The miss window holds the observations of the current plan only: it is cleared at every plan change, and the first
``settle_chunks`` observations after a change (the flush / pipeline fill of the switch) are ignored.

* degrade: with at least ``min_samples`` observations and a miss rate over the window > ``miss_threshold``, the
  current plan gets a strike. If another plan of the same quality is predicted to fit with ``safety`` margin it is
  chosen (e.g. Stream-Batch -> no-batch for a tight latency budget, or 2-frame chunks for throughput); otherwise
  the quality drops one rung (one step fewer, at 1 step one resolution rung lower). At the floor the scheduler logs
  once that the target cannot be met and reports ``saturated`` in the stats.
* recover: while the load is stable (see the cost model) and after ``recover_after`` consecutive clean chunks
  (times ``2 ** strikes`` of the candidate plan, capped at ``2 ** backoff_max``: exponential backoff, so a plan that
  keeps failing is retried ever more rarely), the most preferred plan of the next rung up is chosen if predicted to
  fit with ``headroom`` margin; failing that, a more preferred plan of the current quality (e.g. back to
  Stream-Batch) under the same rule. A plan's strikes are cleared once it runs ``recover_after`` clean chunks.
  ``headroom < safety`` plus the cooldown (``settle_chunks + min_samples``) give hysteresis without flapping.

Defaults (``SLOConfig``): window 16 chunks, min_samples 4, miss_threshold 0.25, settle_chunks 1, recover_after 16,
safety 0.9, headroom 0.85, backoff_max 3, chunk_frames (1, 2), fixed_fraction 1.5, vae_fraction 5.0,
cost_alpha 0.3, learn_samples 4, stable_tolerance 0.25, throughput_tolerance 0.05, 256 decisions kept.

How the engine uses it
----------------------
The worker calls ``plan = scheduler.next_plan()`` before each chunk and applies a changed plan at the chunk boundary:
steps through ``StreamPipeline.set_controls(steps=...)``, the mode through ``StreamPipeline.set_mode(batch)`` (both
flush the Stream-Batch chunks in flight), a new size by flushing and starting a new stream at that size (queued input
frames are re-fitted). It runs the chunk and calls ``scheduler.observe(cost_s, plan=plan, latency_s=..., wait_s=...)``
with the worst end-to-end latency of the frames the chunk emitted (None if none) and that frame's input-queue backlog.
The very first chunk (pipeline prepare) and each switch's flush are covered by ``settle_chunks``. The pipeline has no
2-latent-frame chunks yet, so the engine passes ``SLOConfig(chunk_frames=(1,))``. ``scheduler.stats()`` and
``scheduler.decisions`` feed the engine stats. A user control change calls ``set_caps(steps=..., size=...,
batch=...)``.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sdv2_studio.engine.config import MAX_STEPS
from sdv2_studio.engine.errors import EngineError

SIZE_MULTIPLE = 16  # the VAE downsamples 8x and the DiT patchifies 2x2 (engine/io/frames.py)
MIN_SIDE = 64
PIXELS_PER_LATENT = 4  # pixel frames per latent frame after the first chunk

Clock = Callable[[], float]


# -- plans ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How the next chunk runs."""

    batch: bool  # Stream-Batch over the denoising steps (False: the steps in sequence on one slot)
    steps: int  # denoising steps 1 to MAX_STEPS
    size: tuple[int, int]  # (h, w) model resolution
    chunk_frames: int = 1  # latent frames per chunk (4 pixel frames each)

    @property
    def pixel_frames(self) -> int:
        return PIXELS_PER_LATENT * self.chunk_frames

    @property
    def slots(self) -> int:
        """Stream-Batch depth (1 in no-batch mode or at 1 step)."""
        return self.steps if self.batch else 1

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]

    @property
    def cost_key(self) -> tuple:
        """Plans that run the same computation share a key (Stream-Batch at 1 step is no-batch)."""
        return self.slots > 1, self.steps, self.chunk_frames, self.size

    def label(self) -> str:
        mode = "stream-batch" if self.slots > 1 else "no-batch"
        return f"{mode} {self.steps} step{'s' * (self.steps > 1)} {self.size[1]}x{self.size[0]} {self.pixel_frames}f"

    def __str__(self) -> str:
        return self.label()


@dataclass(frozen=True)
class Decision:
    """One entry of the decision log."""

    time: float  # the scheduler's clock
    reason: str
    from_plan: Plan
    to_plan: Plan  # equal to from_plan for a logged non-change (the floor)
    kind: str = ""  # "start", "switch", "degrade", "recover", "floor", "caps"
    chunk: int = 0  # observations so far


@dataclass(frozen=True)
class Prediction:
    cost: float  # seconds of compute per chunk
    latency: float  # seconds, worst frame of the chunk
    utilisation: float  # cost / chunk period
    load: float  # max(utilisation, latency / budget); <= 1 meets the SLO
    known: bool  # False before any measurement (all numbers are 0 then)


@dataclass(frozen=True)
class SLOConfig:
    """Thresholds of the scheduler (see the module docstring)."""

    window: int = 16  # chunks in the miss-rate window
    min_samples: int = 4  # observations of a plan before it can be judged
    miss_threshold: float = 0.25  # degrade when the miss rate over the window exceeds this
    settle_chunks: int = 1  # observations ignored after a plan change (flush / fill transient)
    recover_after: int = 16  # consecutive clean chunks before stepping up
    safety: float = 0.9  # a plan chosen while degrading must be predicted at <= this load
    headroom: float = 0.85  # a plan chosen while recovering must be predicted at <= this load
    backoff_max: int = 3  # recover_after doubles per strike of the candidate, up to 2 ** backoff_max
    chunk_frames: tuple[int, ...] = (1, 2)  # latent frames per chunk the pipeline supports
    size_scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.625, 0.5)  # resolution ladder
    fixed_fraction: float = 1.5  # per-forward fixed cost, in units of one 1-frame user-size token pass
    vae_fraction: float = 5.0  # VAE encode + decode per latent frame, same unit
    cost_alpha: float = 0.3  # EMA weight of a new measurement for the load
    learn_samples: int = 4  # the first measurements of a visit to a plan fit its correction, not the load
    stable_tolerance: float = 0.25  # the load is "stable" when the last learn_samples estimates agree within this
    throughput_tolerance: float = 0.05  # a chunk slower than period * (1 + this) is a throughput miss
    max_decisions: int = 256

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.min_samples <= self.window:
            raise EngineError("slo: need window >= 1 and 1 <= min_samples <= window")
        if not 0.0 <= self.miss_threshold < 1.0:
            raise EngineError("slo: miss_threshold must be in [0, 1)")
        if not 0.0 < self.headroom <= self.safety:
            raise EngineError("slo: need 0 < headroom <= safety")
        if self.settle_chunks < 0 or self.recover_after < 1 or self.backoff_max < 0 or self.learn_samples < 1:
            raise EngineError("slo: settle_chunks >= 0, recover_after >= 1, backoff_max >= 0, learn_samples >= 1")
        if not self.chunk_frames or any(f < 1 for f in self.chunk_frames):
            raise EngineError("slo: chunk_frames must list latent frame counts >= 1")
        if not self.size_scales or any(not 0.0 < s <= 1.0 for s in self.size_scales):
            raise EngineError("slo: size_scales must be in (0, 1]")


@dataclass
class SLOStats:
    plan: Plan
    user_plan: Plan
    chunks: int = 0  # observations
    misses: int = 0  # chunks that missed (latency or throughput)
    latency_misses: int = 0
    throughput_misses: int = 0
    backlog_misses: int = 0  # over budget only because of input-queue wait (not charged to the plan)
    miss_rate: float = 0.0  # over the last `window` observations, across plan changes
    changes: int = 0  # plan changes
    degrades: int = 0
    recoveries: int = 0
    switches: int = 0  # same-quality plan changes (mode / chunk frames)
    saturated: bool = False  # at the lowest plan and still missing
    predicted: Prediction | None = None  # of the current plan
    last_reason: str = ""


def size_ladder(size: tuple[int, int], scales: Iterable[float] = SLOConfig.size_scales,
                multiple: int = SIZE_MULTIPLE, min_side: int = MIN_SIDE) -> list[tuple[int, int]]:
    """Resolutions from ``size`` downwards: each side scaled and rounded to a multiple, largest first, no repeats.

    ``size_ladder((512, 512))`` is ``[(512, 512), (448, 448), (384, 384), (320, 320), (256, 256)]``.
    """
    h, w = size
    if h % multiple or w % multiple:
        raise EngineError(f"size {w}x{h} is not a multiple of {multiple}")
    out: list[tuple[int, int]] = [(h, w)]
    for s in sorted(set(scales), reverse=True):
        rh = max(min_side, int(round(h * s / multiple)) * multiple)
        rw = max(min_side, int(round(w * s / multiple)) * multiple)
        rung = (min(rh, h), min(rw, w))
        if rung[0] * rung[1] < out[-1][0] * out[-1][1]:
            out.append(rung)
    return out


# -- cost model -------------------------------------------------------------------------------------------------------


@dataclass
class _PlanCost:
    n: int = 0  # measurements, all visits
    correction: float = 1.0
    ema: float = 0.0
    last: int = 0
    learned: int = 0  # samples behind the correction (capped at learn_samples)
    learn: bool = False  # this visit started while the load was stable: its first samples refine the correction
    prior: tuple[float, int] = (1.0, 0)  # (correction, weight) before this visit
    visit: int = 0  # samples in the current visit
    visit_sum: float = 0.0  # sum of cost / (load x units) over the learning samples of this visit


class CostModel:
    """Online per-chunk compute cost: load x structural units x per-plan correction (module docstring)."""

    def __init__(self, ref_pixels: int, config: SLOConfig = SLOConfig()):
        self.ref_pixels = ref_pixels
        self.cfg = config
        self.load: float | None = None  # seconds per unit
        self._load_n = 0
        self.plans: dict[tuple, _PlanCost] = {}
        self._t = 0
        self._evidence: collections.deque[float] = collections.deque(maxlen=config.learn_samples)
        self._current: tuple | None = None

    def units(self, plan: Plan) -> float:
        c = self.cfg
        r = plan.pixels / self.ref_pixels
        forwards = 1 if plan.slots > 1 else plan.steps
        return c.fixed_fraction * forwards + plan.steps * plan.chunk_frames * r + c.vae_fraction * plan.chunk_frames * r

    def update(self, plan: Plan, cost: float) -> None:
        if not cost > 0 or not math.isfinite(cost):
            return
        self._t += 1
        x = cost / self.units(plan)
        key, k = plan.cost_key, self.cfg.learn_samples
        p = self.plans.get(key)
        if p is None:
            p = self.plans[key] = _PlanCost(correction=self.correction(plan))
        if key != self._current:  # a new visit to this plan
            self._current = key
            p.visit, p.visit_sum, p.learn, p.prior = 0, 0.0, self.stable(), (p.correction, p.learned)
        p.visit += 1
        anchor = all(q is p or q.n == 0 for q in self.plans.values())
        if self.load is None or (anchor and p.n < k):
            # the first plan defines the unit: average its first samples into the load, correction 1
            p.correction, p.learned = 1.0, min(k, p.n + 1)
            self._load_n += 1
            self.load = x if self.load is None else self.load + (x - self.load) / self._load_n
        elif p.learn and p.visit <= k:
            # the load is known and steady: what differs from the structural model is this plan's own; the
            # estimate of this visit is blended with earlier visits (each weighted by at most learn_samples)
            c0, w0 = p.prior
            p.visit_sum += x / self.load
            p.correction = (c0 * w0 + p.visit_sum) / (w0 + p.visit)
            p.learned = min(k, w0 + p.visit)
        else:  # a known plan (or a visit that began while the load was moving): the load follows
            self.load += self.cfg.cost_alpha * (x / p.correction - self.load)
        self._evidence.append(x / p.correction)
        p.ema = cost if p.n == 0 else p.ema + self.cfg.cost_alpha * (cost - p.ema)
        p.n += 1
        p.last = self._t

    def stable(self) -> bool:
        """The last ``learn_samples`` load estimates agree within ``stable_tolerance`` (no load change under way)."""
        e = self._evidence
        return len(e) == e.maxlen and max(e) <= (1 + self.cfg.stable_tolerance) * min(e)

    def measured(self, plan: Plan) -> int:
        p = self.plans.get(plan.cost_key)
        return p.n if p else 0

    def correction(self, plan: Plan) -> float:
        p = self.plans.get(plan.cost_key)
        if p is not None and p.n:
            return p.correction
        best, best_d = 1.0, math.inf
        for key, q in self.plans.items():  # borrow from the most similar measured plan
            if not q.n:
                continue
            batch, steps, frames, size = key
            d = ((batch != (plan.slots > 1)) + 0.25 * abs(steps - plan.steps) + 0.5 * abs(frames - plan.chunk_frames)
                 + abs(math.log(size[0] * size[1] / plan.pixels)))
            if d < best_d:
                best, best_d = q.correction, d
        return best

    def cost(self, plan: Plan) -> float | None:
        """Predicted seconds of compute for one chunk of ``plan`` (None before any measurement)."""
        if self.load is None:
            return None
        return self.load * self.units(plan) * self.correction(plan)


# -- scheduler --------------------------------------------------------------------------------------------------------


class SLOScheduler:
    """Chooses the plan of each chunk to meet ``target_fps`` and ``latency_budget`` (module docstring)."""

    def __init__(self, target_fps: float, latency_budget: float | None = None, *, steps: int,
                 size: tuple[int, int], batch: bool = True, config: SLOConfig = SLOConfig(),
                 clock: Clock = time.monotonic):
        if not target_fps > 0:
            raise EngineError(f"target fps must be > 0, not {target_fps}")
        if latency_budget is not None and not latency_budget > 0:
            raise EngineError(f"latency budget must be > 0 seconds, not {latency_budget}")
        self.target_fps = float(target_fps)
        self.latency_budget = latency_budget
        self.cfg = config
        self._clock = clock
        self._lock = threading.RLock()
        self._decisions: collections.deque[Decision] = collections.deque(maxlen=config.max_decisions)
        self._strikes: dict[tuple, int] = {}
        self._chunks = self._misses = self._lat_misses = self._tput_misses = self._backlog_misses = 0
        self._recent: collections.deque[bool] = collections.deque(maxlen=config.window)
        self._changes = self._degrades = self._recoveries = self._switches = 0
        self._saturated = False
        self._window: collections.deque[bool] = collections.deque(maxlen=config.window)
        self._since_change = 0
        self._clean = 0
        self._issued: Plan | None = None
        self._set_user(steps, tuple(size), batch)
        self.model = CostModel(self._ladder[0][0] * self._ladder[0][1], config)
        self._plan = self._variants(self._steps_cap, 0)[0]
        self._level = (self._steps_cap, 0)
        self._log("start", "user plan", self._plan, self._plan)

    # -- caps ---------------------------------------------------------------------------------------------------------

    def _set_user(self, steps: int, size: tuple[int, int], batch: bool) -> None:
        if not 1 <= steps <= MAX_STEPS:
            raise EngineError(f"denoising steps must be 1-{MAX_STEPS}, not {steps}")
        self._steps_cap, self._batch_ok = int(steps), bool(batch)
        self._ladder = size_ladder(size, self.cfg.size_scales)

    def set_caps(self, *, steps: int | None = None, size: tuple[int, int] | None = None,
                 batch: bool | None = None) -> Plan:
        """The user changed steps / resolution / Stream-Batch permission: jump to the user's plan under the new caps
        (the SLO logic degrades again if it does not fit). Returns the new plan."""
        with self._lock:
            old_size = self._ladder[0]
            self._set_user(self._steps_cap if steps is None else steps, old_size if size is None else tuple(size),
                           self._batch_ok if batch is None else batch)
            if self._ladder[0] != old_size:
                self.model = CostModel(self._ladder[0][0] * self._ladder[0][1], self.cfg)
                self._strikes.clear()
            new = self._variants(self._steps_cap, 0)[0]
            self._change(new, (self._steps_cap, 0), "caps", "user changed the controls")
            return new

    @property
    def user_plan(self) -> Plan:
        return self._variants(self._steps_cap, 0)[0]

    @property
    def ladder(self) -> list[tuple[int, int]]:
        return list(self._ladder)

    # -- plans of a quality level --------------------------------------------------------------------------------------

    def _variants(self, steps: int, rung: int) -> list[Plan]:
        """Plans of quality (steps, ladder[rung]) in preference order."""
        size = self._ladder[rung]
        if steps == 1:
            modes = [self._batch_ok]  # the same pipeline either way: keep the preferred flag, no spurious switches
        else:
            modes = [True, False] if self._batch_ok else [False]
        return [Plan(m, steps, size, f) for f in sorted(set(self.cfg.chunk_frames)) for m in modes]

    def _lower(self, level: tuple[int, int]) -> tuple[int, int] | None:
        steps, rung = level
        if steps > 1:
            return steps - 1, rung
        return (1, rung + 1) if rung + 1 < len(self._ladder) else None

    def _higher(self, level: tuple[int, int]) -> tuple[int, int] | None:
        steps, rung = level
        if steps < self._steps_cap:
            return steps + 1, rung
        return (steps, rung - 1) if rung > 0 else None

    # -- prediction ----------------------------------------------------------------------------------------------------

    def predict(self, plan: Plan) -> Prediction:
        """Predicted cost, latency and load factor of ``plan`` under the current cost model."""
        with self._lock:
            cost = self.model.cost(plan)
            if cost is None:
                return Prediction(0.0, 0.0, 0.0, 0.0, known=False)
            period = plan.pixel_frames / self.target_fps
            latency = (plan.pixel_frames - 1) / self.target_fps + cost
            if plan.slots > 1:
                latency += (plan.steps - 1) * max(period, cost)
            util = cost / period
            load = util if self.latency_budget is None else max(util, latency / self.latency_budget)
            return Prediction(cost, latency, util, load, known=True)

    def _struck(self, plan: Plan) -> int:
        return self._strikes.get(plan.cost_key, 0)

    def _pick(self, level: tuple[int, int], margin: float, *, exclude: Plan | None = None,
              fresh_only: bool = False) -> Plan | None:
        """The most preferred plan of ``level`` predicted at load <= margin (fresh_only: without strikes)."""
        for p in self._variants(*level):
            if p == exclude or (fresh_only and self._struck(p)):
                continue
            if self.predict(p).load <= margin:
                return p
        return None

    def _best_effort(self, level: tuple[int, int]) -> Plan:
        return min(self._variants(*level), key=lambda p: self.predict(p).load)

    # -- the loop ------------------------------------------------------------------------------------------------------

    @property
    def plan(self) -> Plan:
        return self._plan

    def next_plan(self) -> Plan:
        """The plan for the next chunk (the engine applies a change at the chunk boundary)."""
        with self._lock:
            self._issued = self._plan
            return self._plan

    def observe(self, cost_s: float, *, plan: Plan | None = None, latency_s: float | None = None,
                wait_s: float | None = None, missed: bool | None = None) -> None:
        """Report one chunk.

        cost_s: compute time of the chunk (``process`` call). plan: the plan it ran with (default: the last
        ``next_plan``). latency_s: the worst end-to-end latency of the frames it emitted (None when it emitted none).
        wait_s: how much of that latency was input-queue backlog (time the frames waited beyond their chunk's fill
        because the worker was still busy with earlier chunks). missed: the caller's own verdict for the chunk's
        frames, or None to judge ``latency_s`` against the budget.
        """
        with self._lock:
            plan = plan or self._issued or self._plan
            self._chunks += 1
            current = plan == self._plan
            if current:
                self._since_change += 1
                if self._since_change <= self.cfg.settle_chunks:
                    return
            self.model.update(plan, cost_s)
            budget = self.latency_budget
            over = bool(missed) or (latency_s is not None and budget is not None and latency_s > budget)
            lat_miss = over
            if over and wait_s is not None and latency_s is not None and budget is not None:
                lat_miss = latency_s - max(0.0, wait_s) > budget  # the plan's own share of the latency
            tput_miss = cost_s > plan.pixel_frames / self.target_fps * (1 + self.cfg.throughput_tolerance)
            miss = lat_miss or tput_miss
            self._misses += over or tput_miss
            self._lat_misses += over
            self._tput_misses += tput_miss
            self._backlog_misses += over and not lat_miss
            self._recent.append(over or tput_miss)
            if not current:  # a late report about an older plan: costs only
                return
            self._window.append(miss)
            self._clean = 0 if miss else self._clean + 1
            if self._clean >= self.cfg.recover_after:
                self._strikes.pop(plan.cost_key, None)
            self._decide()

    def _decide(self) -> None:
        cfg, plan, level = self.cfg, self._plan, self._level
        n = len(self._window)
        if n < cfg.min_samples:
            return
        misses = sum(self._window)
        rate = misses / n
        if rate > cfg.miss_threshold:
            self._strikes[plan.cost_key] = self._struck(plan) + 1
            why = f"misses {misses}/{n} > {cfg.miss_threshold:.0%} ({self._explain(plan)})"
            alt = self._pick(level, cfg.safety, exclude=plan, fresh_only=True)
            if alt is not None:
                self._change(alt, level, "switch", f"{why}; {self._explain(alt, 'predicted ')}")
                return
            lower = self._lower(level)
            if lower is None:
                if not self._saturated:
                    self._log("floor", f"{why}; at the lowest plan, the target cannot be met", plan, plan)
                self._saturated = True
                self._window.clear()
                return
            new = self._pick(lower, cfg.safety) or self._best_effort(lower)
            what = "fewer steps" if lower[0] < level[0] else "lower resolution"
            self._change(new, lower, "degrade", f"{why}; {what}: {self._explain(new, 'predicted ')}")
            return
        if rate == 0 and n == self._window.maxlen:
            self._saturated = False
        if not self.model.stable():  # the load is moving: predictions are not to be trusted for a step up
            return
        higher = self._higher(level)
        if higher is not None:
            cand = self._pick(higher, cfg.headroom)
            if cand is not None and self._clean >= self._needed(cand):
                what = "more steps" if higher[0] > level[0] else "higher resolution"
                self._change(cand, higher, "recover",
                             f"{self._clean} clean chunks; {what}: {self._explain(cand, 'predicted ')}")
                return
        for cand in self._variants(*level):  # a more preferred plan of the same quality
            if cand == plan:
                break
            if self.predict(cand).load <= cfg.headroom and self._clean >= self._needed(cand):
                self._change(cand, level, "recover",
                             f"{self._clean} clean chunks; preferred plan: {self._explain(cand, 'predicted ')}")
                return

    def _needed(self, plan: Plan) -> int:
        return self.cfg.recover_after * 2 ** min(self._struck(plan), self.cfg.backoff_max)

    def _explain(self, plan: Plan, prefix: str = "") -> str:
        p = self.predict(plan)
        if not p.known:
            return f"{plan.label()}, no cost measured yet"
        budget = "" if self.latency_budget is None else f"/{self.latency_budget:.3f}"
        return (f"{plan.label()}: {prefix}cost {p.cost * 1e3:.0f} ms, latency {p.latency:.3f}{budget} s, "
                f"utilisation {p.utilisation:.2f}")

    def _change(self, new: Plan, level: tuple[int, int], kind: str, reason: str) -> None:
        old = self._plan
        self._plan, self._level = new, level
        self._window.clear()
        self._since_change = 0
        self._clean = 0
        if new == old:
            return
        self._changes += 1
        self._saturated = False
        self._degrades += kind == "degrade"
        self._recoveries += kind == "recover"
        self._switches += kind == "switch"
        self._log(kind, reason, old, new)

    def _log(self, kind: str, reason: str, old: Plan, new: Plan) -> None:
        self._decisions.append(Decision(self._clock(), reason, old, new, kind, self._chunks))

    # -- reporting -----------------------------------------------------------------------------------------------------

    @property
    def decisions(self) -> list[Decision]:
        with self._lock:
            return list(self._decisions)

    def stats(self) -> SLOStats:
        with self._lock:
            recent = sum(self._recent) / len(self._recent) if self._recent else 0.0
            return SLOStats(
                plan=self._plan, user_plan=self.user_plan, chunks=self._chunks, misses=self._misses,
                latency_misses=self._lat_misses, throughput_misses=self._tput_misses,
                backlog_misses=self._backlog_misses,
                miss_rate=recent, changes=self._changes, degrades=self._degrades,
                recoveries=self._recoveries, switches=self._switches, saturated=self._saturated,
                predicted=self.predict(self._plan), last_reason=self._decisions[-1].reason if self._decisions else "")


__all__ = ["CostModel", "Decision", "Plan", "Prediction", "SLOConfig", "SLOScheduler", "SLOStats", "size_ladder"]
