"""The engine API shared by the CLI, the desktop app and the OBS bridge (Qt-free, thread-safe).

    engine = Engine(EngineConfig(model="tiny", size=(256, 256), controls=Controls(steps=2)))
    engine.start(progress=lambda msg, frac: ...)   # load weights, start the worker thread
    engine.push(frame, pts=0.04)                    # HxWx3 uint8 of any size; never blocks unless asked to
    styled = engine.pull(timeout=0.1)               # HxWx3 uint8, same size as its input frame, or None
    styled, pts = engine.pull_timed(timeout=0.1)    # ... with its input frame's presentation time (or None)
    engine.set_controls(prompt="...", steps=1)      # checked now, applied at the next chunk boundary
    engine.set_controls(preset.controls)            # a whole Controls (any state: before start it is the start's)
    engine.stats()                                  # fps, latency p50/p99, deadline misses, TTFF, drops
    engine.stop()                                   # finish what was pushed (padding the last chunk)

Input and output queues are bounded. Live sources push with `block=False`: when the engine falls behind, the
oldest waiting frames are dropped (counted in stats), so latency stays bounded. Offline jobs (files, the test
source) use `lossless=True`: pushes and the worker wait instead of dropping, and every frame comes out.

SLO mode (`target_fps` set): an `engine.slo.SLOScheduler` picks Stream-Batch vs no-batch, the denoising steps (at
most the user's) and the resolution (at most the configured size; single device only) before every chunk, from the
measured chunk costs, the latency budget and the deadline misses; `stats().slo` has the plan, the counters and the
last decision's reason. Sources, outputs and steady delivery to live outputs are `engine.session.Session`'s part.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import numbers
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from sdv2_studio.engine.config import CONTROL_FIELDS, PASSTHROUGH, CacheConfig, Controls, check_model_files
from sdv2_studio.engine.device import auto_dtype, use_device
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.frames import check_fit, check_size, fit_frame, restore_frame
from sdv2_studio.engine.models import ModelBundle, Progress, ResolvedModel, load_bundle, resolve_model
from sdv2_studio.engine.passthrough import PassthroughPipeline
from sdv2_studio.engine.pipeline import NO_LORAS, StreamPipeline
from sdv2_studio.engine.presets import resolve_lora_ref
from sdv2_studio.engine.slo import Plan, SLOConfig, SLOScheduler, SLOStats
from sdv2_studio.engine.text import PromptCache, default_prompt_cache_dir

if TYPE_CHECKING:
    from sdv2_studio.engine.lora import LoRA, SwitchStats


@dataclass
class EngineConfig:
    model: str = "auto"  # "auto" (downloaded 1.3B, else tiny), "tiny", "passthrough" (identity), or a DiT checkpoint
    base: str | None = None  # Wan2.1 base folder (original or diffusers: VAE, umT5); found automatically when None
    vae: str | None = None  # a VAE file/folder (any layout); None: the base folder's
    text_encoder: str | None = None  # a umT5 file/folder (any layout); None: the base folder's
    tokenizer: str | None = None  # its tokenizer folder or spiece.model; None: beside the weights, or embedded
    loras: tuple = ()  # "FILE[:STRENGTH]" or (path, strength) each; normalised to ((path, strength), ...)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    dtype: str = "auto"  # "auto" (bf16 on GPUs >= sm80, fp16 older, fp32 CPU), "bfloat16", "float16", "float32"
    text_device: str = "cpu"  # umT5 runs here (CPU saves ~11 GB of VRAM; prompts are cached anyway)
    size: tuple[int, int] | None = None  # (h, w) model resolution; None = the model's default
    fit: str = "crop"  # frames of another aspect: "crop" to fill or "bars" to fit (engine.io.frames.fit_frame)
    batch: bool = True  # Stream-Batch over denoising steps (False: steps in sequence, lower memory)
    controls: Controls = field(default_factory=Controls)
    cache: CacheConfig = field(default_factory=CacheConfig)
    queue_frames: int = 32  # input frames waiting at most (drop-oldest beyond, unless lossless)
    lossless: bool = False  # offline jobs: block instead of dropping
    latency_budget: float | None = None  # seconds; frames slower than this count as deadline misses
    target_fps: float | None = None  # SLO scheduling towards this output rate (None: off, the plan stays fixed)
    slo: SLOConfig = field(default_factory=lambda: SLOConfig(chunk_frames=(1,)))  # the pipeline has 4-frame chunks
    prompt_cache_dir: str | None = None  # default: the user cache dir; "" disables the disk cache
    # Prompts encoded in the background once the stream runs (the presets a user may click), so that switching to
    # one is a cache hit; prompts set live go first.
    warm_prompts: tuple[str, ...] = ()
    taehv: str | None = None  # path to taew2_1.pth: decode with the TAEHV tiny decoder (lower latency)
    ranks: int = 1  # pipeline-parallel stages (1-4 GPUs; CPU processes over gloo without GPUs)
    rank_timeout: float = 60.0  # seconds before a silent rank is declared hung
    threads_per_rank: int = 0  # CPU ranks: torch threads each (0: cores // ranks)
    rebalance_after: int | None = None  # chunks before blocks are rebalanced once (None: 2 * (ranks + steps); 0: never)
    profile: bool = False  # synchronise around each stage for exact per-stage timings
    # torch.compile the DiT's steady-state chunk step (engine/compiled.py): Inductor on CPU, CUDA graphs on CUDA;
    # compiled once per configuration at start (cached on disk), before the first frame
    compile: bool = False

    def __post_init__(self) -> None:
        """Model files checked here, at the boundary (engine.config.check_model_files: one line naming the fix)."""
        self.loras = check_model_files(self.model, self.base, self.vae, self.text_encoder, self.tokenizer, self.loras)
        check_fit(self.fit)

    def resolve_model(self) -> ResolvedModel:
        return resolve_model(self.model, self.base, vae=self.vae, text_encoder=self.text_encoder,
                             tokenizer=self.tokenizer, loras=self.loras)


def resolve_device(device: str) -> torch.device:
    """The device `device` names, checked, and set up for this process (engine.device.use_device)."""
    try:
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    except (RuntimeError, TypeError):
        raise EngineError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device} requested but CUDA is not available; install the CUDA build of torch "
                          "(see README) or use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EngineError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    use_device(dev)
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return auto_dtype(device)
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise EngineError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    return names[dtype]


@dataclass
class Stats:
    frames_in: int = 0
    frames_out: int = 0
    dropped_in: int = 0  # input frames dropped because the engine was behind
    dropped_out: int = 0  # styled frames nobody pulled in time
    chunks: int = 0
    fps: float = 0.0  # styled frames per second over the last few seconds
    latency_p50: float = 0.0  # seconds from push to styled frame ready
    latency_p99: float = 0.0
    deadline_misses: int = 0
    ttff: float | None = None  # seconds from start() returning to the first styled frame
    chunk_ms: float = 0.0  # median compute time per chunk
    mode: str = ""
    slo: SLOStats | None = None  # plan, misses, degrades/recoveries, last decision (SLO mode)
    rank_utilisation: list[float] = field(default_factory=list)  # pipeline ranks: busy fraction of wall time
    lora_switch: SwitchStats | None = None  # what the last switch of the controls' LoRAs cost (time, bytes)
    model: str = ""
    untrained: bool = False
    running: bool = False
    error: str | None = None


class Engine:
    """One stream: a worker thread runs the StreamPipeline over frames pushed from any thread."""

    def __init__(self, config: EngineConfig | None = None, bundle: ModelBundle | None = None):
        self.config = config or EngineConfig()
        self._bundle = bundle
        self._lock = threading.Condition()
        self._inq: collections.deque = collections.deque()
        self._outq: collections.deque = collections.deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._joining = False
        self._pushers = 0  # threads waiting in a blocking push that also pull (lossless: the worker may then
        self._puller: int | None = None  # overfill the output); the thread that pulled last
        self._error: BaseException | None = None
        self._stats = Stats()
        self._lat: collections.deque = collections.deque(maxlen=512)
        self._out_times: collections.deque = collections.deque(maxlen=256)
        self._chunk_times: collections.deque = collections.deque(maxlen=64)
        self.pipeline: StreamPipeline | PassthroughPipeline | None = None
        self.bundle: ModelBundle | None = None
        self.scheduler: SLOScheduler | None = None
        self._rebuild = None  # (size, controls, batch) -> StreamPipeline, for resolution changes (single device)
        self._controls_lock = threading.Lock()  # one set_controls at a time (LoRA files are read outside `_lock`)
        # Controls.loras -> the LoRAs read and checked on the caller's thread (the last few sets; the engine thread
        # only merges what set_controls prepared, even when newer sets were prepared since)
        self._loras_ready: dict[tuple, list[tuple[LoRA, float]]] = {}
        self._lora_switch: SwitchStats | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self, progress: Progress | None = None) -> Engine:
        """Load the models (in the calling thread; report through `progress`) and start the worker."""
        cfg = self.config
        # checked before anything loads: a chunk's input frames must fit in the queue together
        need = max(cfg.cache.first_pixels, cfg.cache.chunk_pixels)
        if isinstance(cfg.queue_frames, bool) or not isinstance(cfg.queue_frames, int) or cfg.queue_frames < need:
            raise EngineError(f"queue_frames {cfg.queue_frames!r} is too small: a chunk needs {need} input frames "
                              f"waiting together; use queue_frames >= {need}")
        self._prepare_loras(cfg.controls.loras)  # the preset's LoRA files exist (and no ranks) before loading
        if cfg.size:
            check_size(*cfg.size)  # a size the model cannot take is refused before it loads
        if cfg.ranks > 1 or "," in cfg.device:
            if cfg.compile:
                raise EngineError("--compile runs on one device for now; drop --compile or use one device")
            return self._start_parallel(progress)
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        loading = None if progress is None else (lambda message, f: progress(message, 0.85 * f))  # then the prompt
        bundle = self._bundle or load_bundle(cfg.resolve_model(), device=device, dtype=dtype,
                                             text_device=cfg.text_device, progress=loading)
        self.bundle = bundle
        self._prepare_loras(cfg.controls.loras)
        h, w = check_size(*(cfg.size or bundle.default_size))
        if bundle.model.passthrough:  # no network: the identity in place of the pipeline, the rest unchanged
            if cfg.compile or cfg.taehv:
                raise EngineError("the passthrough model runs no network: drop --compile and --taehv")
            self.pipeline = PassthroughPipeline((h, w), cfg.controls, cfg.batch, cfg.cache)
            self._rebuild = functools.partial(PassthroughPipeline, cache_cfg=cfg.cache)
            return self._launch(progress)
        folder = default_prompt_cache_dir() if cfg.prompt_cache_dir is None else (cfg.prompt_cache_dir or None)
        prompts = PromptCache(bundle.text, folder)
        if progress:
            progress("encoding the prompt", 0.9)
        decoder = None
        if cfg.taehv:
            from sdv2_studio.engine.taehv import load_taehv

            decoder = load_taehv(cfg.taehv, dtype=torch.float16 if device.type == "cuda" else torch.float32,
                                 device=device)
        def make(size, controls, batch) -> StreamPipeline:
            return StreamPipeline(bundle.dit, bundle.vae, prompts, size=size, controls=controls, batch=batch,
                                  cache_cfg=cfg.cache, device=device, dtype=dtype, decoder=decoder,
                                  profile=cfg.profile, background_prompts=not cfg.lossless,
                                  set_loras=self._set_loras)

        self.pipeline = make((h, w), cfg.controls, cfg.batch)
        self._rebuild = make
        if cfg.compile:
            from sdv2_studio.engine.compiled import compile_decoder, compile_model, warm_up

            if progress:
                progress("compiling the model (once per configuration; cached on disk)", 0.95)
            try:
                compile_model(bundle.dit, device)
                warm_up(bundle.dit, self.pipeline.cache, cfg.cache.chunk_frames, self.pipeline.latent_hw, dtype)
                if device.type == "cuda":  # on a CPU Inductor's convolutions lose to the eager oneDNN path
                    compile_decoder(self.pipeline.decoder, device,
                                    (1, bundle.dit.cfg.out_dim, cfg.cache.chunk_frames, *self.pipeline.latent_hw))
            except BaseException:  # the bundle may be shared: leave it eager as it came
                bundle.dit.compiled_step = self.pipeline.decoder.compiled_step = None
                raise
        return self._launch(progress)

    def _start_parallel(self, progress: Progress | None) -> Engine:
        """Ranks 1..N-1 in spawned processes, this process as rank 0 (encode, embeddings, first blocks)."""
        import os

        from sdv2_studio.engine.parallel import RankGroup, RingDenoiser, rank_devices, stage_select

        cfg = self.config
        devices = rank_devices(cfg.device, cfg.ranks)
        dtype = resolve_dtype(cfg.dtype, devices[0])
        model = cfg.resolve_model()
        if model.passthrough:
            raise EngineError("the passthrough model runs no network to split: drop --ranks and the device list")
        if model.loras or cfg.vae:
            raise EngineError("--lora and --vae are not supported with pipeline ranks yet (the other ranks would "
                              "load the base folder's parts): use one device, or put the VAE in the --base folder")
        h, w = check_size(*(cfg.size or model.default_size))
        threads = cfg.threads_per_rank or max(1, (os.cpu_count() or 1) // len(devices))
        if devices[0].type == "cpu":
            torch.set_num_threads(threads)
        if progress:
            progress(f"starting {len(devices)} pipeline ranks on {', '.join(map(str, devices))}", 0.0)
        slots = cfg.controls.steps if cfg.batch else 1
        self._group = RankGroup(devices=devices, model=model.spec, base=str(model.base) if model.base else None,
                                dtype=dtype, size=(h, w), slots=slots, steps=cfg.controls.steps, cache=cfg.cache,
                                num_layers=model.num_layers, timeout=cfg.rank_timeout, threads=threads, taehv=cfg.taehv)
        try:
            select = stage_select(self._group.ranges[0], first=True, last=False)
            bundle = load_bundle(model, device=devices[0], dtype=dtype, text_device=cfg.text_device,
                                 progress=progress, select=select)
            self.bundle = bundle
            folder = default_prompt_cache_dir() if cfg.prompt_cache_dir is None else (cfg.prompt_cache_dir or None)
            after = cfg.rebalance_after
            if after is None:
                after = 2 * (len(devices) + cfg.controls.steps)
            ring = RingDenoiser(bundle.dit, size=(h, w), dtype=dtype, ranges=self._group.ranges,
                                link=self._group.link, model_spec=model.spec, rebalance_after=after)
            self.pipeline = StreamPipeline(bundle.dit, bundle.vae, PromptCache(bundle.text, folder), size=(h, w),
                                           controls=cfg.controls, batch=cfg.batch, cache_cfg=cfg.cache,
                                           device=devices[0], dtype=dtype, profile=cfg.profile, executor=ring,
                                           background_prompts=not cfg.lossless)
        except BaseException:
            self._group.shutdown(None)
            raise
        return self._launch(progress)

    def _launch(self, progress: Progress | None) -> Engine:
        cfg, bundle = self.config, self.bundle
        self.pipeline.warm_prompts(cfg.warm_prompts)
        ranks = getattr(self, "_group", None)
        mode = "stream-batch" if cfg.batch else "no-batch"
        if ranks is not None:
            mode += f", {ranks.world} ranks"
        self._stats = Stats(mode=mode, model=bundle.name, untrained=bundle.untrained, running=True)
        self.scheduler = None
        if cfg.target_fps is not None:
            slo = cfg.slo if self._rebuild is not None else dataclasses.replace(cfg.slo, size_scales=(1.0,))
            self.scheduler = SLOScheduler(cfg.target_fps, cfg.latency_budget, steps=cfg.controls.steps,
                                          size=self.pipeline.size, batch=cfg.batch, config=slo)
        self._stopping = self._joining = False
        self._t_start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="sdv2-engine", daemon=True)
        self._thread.start()
        if progress:
            progress("running", 1.0)
        return self

    def finish(self, drop_waiting: bool = False) -> None:
        """No more input: the worker processes what was pushed (padding the last partial chunk), flushes the
        Stream-Batch pipeline and exits. Keep pulling until `done()`. `drop_waiting`: input frames still waiting
        for a chunk are dropped instead (counted in stats; a live stream that stops)."""
        with self._lock:
            if drop_waiting:
                self._stats.dropped_in += len(self._inq)
                self._inq.clear()
            self._stopping = True
            self._lock.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every frame pushed so far and wait for the worker. Results nobody pulls are kept up to the
        queue size; beyond that the oldest are dropped (counted in stats.dropped_out)."""
        with self._lock:
            self._stopping = True
            self._joining = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.pipeline is not None:
            self.pipeline.close()
            prompts = getattr(self.pipeline, "prompts", None)  # (the passthrough model has none)
            if prompts is not None:  # the text encoder's child process (live streams) ends with the stream
                prompts.encoder.close()
            if self.config.compile:  # a shared bundle's next engine may not want them
                self.pipeline.dit.compiled_step = self.pipeline.decoder.compiled_step = None
        self._stats.running = False
        group = getattr(self, "_group", None)
        if group is not None:
            group.shutdown(self.pipeline if self._error is None else None)
            self._group = None
        self._raise_error()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.stop()

    @property
    def size(self) -> tuple[int, int]:
        """The model resolution (h, w)."""
        if self.pipeline is None:
            raise EngineError("the engine is not started")
        return self.pipeline.size

    # -- frames -------------------------------------------------------------------------------------------------------

    def push(self, frame: np.ndarray, block: bool | None = None, timeout: float | None = None, *,
             pts: float | None = None) -> bool:
        """Queue one HxWx3 uint8 RGB frame (at least 1x1). ``pts`` (seconds, optional) is its presentation time:
        the styled frame made from it carries it (`pull_timed`). Returns False if the oldest queued frame had to be
        dropped."""
        self._raise_error()
        if self.pipeline is None:
            raise EngineError("start the engine before pushing frames")
        if pts is not None and (isinstance(pts, bool) or not isinstance(pts, numbers.Real) or not math.isfinite(pts)):
            raise ValueError(f"pts must be a finite number of seconds or None, not {pts!r}")
        small = fit_frame(frame, self.pipeline.size, self.config.fit)
        block = self.config.lossless if block is None else block
        item = (small, frame.shape, time.perf_counter(), None if pts is None else float(pts))
        with self._lock:
            if block:
                limit = self.config.queue_frames
                # a thread that pulls too (a push-then-pull loop; or nobody pulled yet) cannot pull while it waits
                # here: the worker may overfill the output for it (`_emit`) rather than both wait forever
                self_pulls = self._puller in (None, threading.get_ident())
                self._pushers += self_pulls
                self._lock.notify_all()
                try:
                    ok = self._lock.wait_for(lambda: len(self._inq) < limit or self._error
                                             or (self_pulls and len(self._outq) >= 2 * limit), timeout)
                finally:
                    self._pushers -= self_pulls
                if not ok:
                    raise TimeoutError("engine input queue stayed full")
                self._raise_error()
                if len(self._inq) >= limit:  # both queues full: the caller pushes and never pulls
                    raise EngineError(f"lossless: {len(self._outq)} styled frames wait to be pulled and the input "
                                      f"is full; pull() the styled frames while pushing")
            dropped = False
            if len(self._inq) >= self.config.queue_frames:
                self._inq.popleft()
                self._stats.dropped_in += 1
                dropped = True
            self._inq.append(item)
            self._stats.frames_in += 1
            self._lock.notify_all()
        return not dropped

    def pull(self, timeout: float | None = 0.0) -> np.ndarray | None:
        """The next styled frame (same size as its input frame), or None if none is ready within `timeout`."""
        got = self.pull_timed(timeout)
        return None if got is None else got[0]

    def pull_timed(self, timeout: float | None = 0.0) -> tuple[np.ndarray, float | None] | None:
        """The next styled frame and the ``pts`` its input frame was pushed with, or None as `pull`."""
        with self._lock:
            self._puller = threading.get_ident()
            if not self._outq:
                self._lock.wait_for(lambda: self._outq or self._error or self._finished(), timeout)
            if self._outq:
                styled = self._outq.popleft()
                self._lock.notify_all()
                return styled
        self._raise_error()
        return None

    def done(self) -> bool:
        """True once stop() was requested and every result has been pulled."""
        with self._lock:
            return self._finished() and not self._outq

    def _finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    # -- controls and stats -------------------------------------------------------------------------------------------

    def set_controls(self, controls: Controls | None = None, /, **changes) -> Controls:
        """Set the stream's controls: a whole `Controls` (a preset's) and/or field changes on top of it (default: on
        top of the controls set last). Checked now (EngineError naming the field); returns the result. Works in any
        state, and `config.controls` always holds the result: before `start()` the stream starts with them, while
        running they apply at the next chunk boundary."""
        if controls is not None and not isinstance(controls, Controls):
            raise EngineError(f"set_controls takes a Controls (e.g. a preset's) or keywords like steps=2, "
                              f"not {type(controls).__name__}")
        unknown = sorted(set(changes) - set(CONTROL_FIELDS))
        if unknown:
            raise EngineError(f"unknown control {', '.join(unknown)}; the controls are {', '.join(CONTROL_FIELDS)}")
        with self._controls_lock:
            with self._lock:
                old = self.config.controls
                new = dataclasses.replace(old if controls is None else controls, **changes)
            if new.loras != old.loras:
                self._prepare_loras(new.loras)  # the files read and checked now, not on the stream's thread
            with self._lock:
                self.config.controls = new
                if self.pipeline is not None:  # only what changed: steps the SLO plan lowered stay lowered otherwise
                    delta = {f: getattr(new, f) for f in CONTROL_FIELDS if getattr(new, f) != getattr(old, f)}
                    if delta:
                        self.pipeline.set_controls(**delta)
                    if self.scheduler is not None and "steps" in delta:
                        self.scheduler.set_caps(steps=new.steps)  # the user's steps are the scheduler's cap
                return new

    def _prepare_loras(self, loras: tuple[tuple[str, float], ...]) -> None:
        """Check the LoRA files `loras` (Controls.loras) names: found (engine.presets.resolve_lora_ref), a LoRA,
        fit for the loaded model (read once; the bundle's LoRAMerger keeps them). One EngineError line otherwise,
        and nothing changes. Before start() only that the files exist; the rest at start."""
        if not loras or self.config.model == PASSTHROUGH:  # the passthrough model ignores presets' styles
            return
        if self.config.ranks > 1 or "," in self.config.device:
            raise EngineError(NO_LORAS)
        files = [(resolve_lora_ref(ref), strength) for ref, strength in loras]
        if self.bundle is not None:
            merger = self.bundle.merger()
            ready = merger.load(files)
            merger.check_room([*merger.fixed, *ready])
            self._loras_ready[loras] = ready
            while len(self._loras_ready) > 4:
                del self._loras_ready[next(iter(self._loras_ready))]

    def _set_loras(self, loras: tuple[tuple[str, float], ...]) -> None:
        """The pipeline's hook (engine thread, between chunks): the DiT = base + the model's LoRAs + `loras`."""
        if not loras and self.bundle.loras is None:
            return  # nothing was ever merged
        ready = self._loras_ready.get(loras) if loras else []
        if ready is None:  # prepared by set_controls or start; only a set evicted since is read again, here
            self._prepare_loras(loras)
            ready = self._loras_ready[loras]
        self._lora_switch = self.bundle.merger().switch(ready)

    @property
    def controls(self) -> Controls:
        """The controls in effect: while running those the pipeline applies now, else `config.controls`."""
        return self.pipeline.controls if self.pipeline is not None else self.config.controls

    def stats(self) -> Stats:
        with self._lock:
            s = dataclasses.replace(self._stats)
            lat = sorted(self._lat)
            if lat:
                s.latency_p50 = lat[len(lat) // 2]
                s.latency_p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
            ot = self._out_times
            if len(ot) >= 2 and ot[-1] > ot[0]:
                s.fps = (len(ot) - 1) / (ot[-1] - ot[0])
            if self._chunk_times:
                s.chunk_ms = sorted(self._chunk_times)[len(self._chunk_times) // 2] * 1e3
            if self.scheduler is not None:
                s.slo = self.scheduler.stats()
                ranks = s.mode.partition(",")[2]
                s.mode = ("stream-batch" if s.slo.plan.slots > 1 else "no-batch") + (f",{ranks}" if ranks else "")
            if self.pipeline is not None:
                s.rank_utilisation = self.pipeline.executor.utilisation()
            s.lora_switch = self._lora_switch
            s.error = str(self._error) if self._error else None
            return s

    def _raise_error(self) -> None:
        err = self._error
        if err is None:
            return
        if isinstance(err, EngineError):
            raise EngineError(str(err))
        raise EngineError(f"the engine stopped: {type(err).__name__}: {err}") from err

    # -- worker -------------------------------------------------------------------------------------------------------

    def _take(self) -> tuple[list, int] | None:
        """Wait for the next chunk's frames; at stop, pad a partial chunk. Returns (items, real count)."""
        pipe = self.pipeline
        with self._lock:
            self._lock.wait_for(lambda: len(self._inq) >= pipe.frames_needed or self._stopping)
            need = pipe.frames_needed
            if len(self._inq) >= need:
                items = [self._inq.popleft() for _ in range(need)]
                self._lock.notify_all()
                real = need
            elif not self._inq:
                return None
            else:
                items = list(self._inq)
                self._inq.clear()
                self._lock.notify_all()
                real = len(items)
        items += [items[-1]] * (need - real)
        # frames fitted before a resolution change
        items = [it if it[0].shape[:2] == pipe.size else (fit_frame(it[0], pipe.size, self.config.fit), *it[1:])
                 for it in items]
        return items, real

    def _run(self) -> None:
        pending: collections.deque = collections.deque()  # (original shape, push time, backlog, pts) per input frame
        sched = self.scheduler
        applied = sched.plan if sched is not None else None
        try:
            while True:
                plan = sched.next_plan() if sched is not None else None
                if plan is not None and plan != applied:
                    self._emit(self._apply_plan(plan), pending)  # frames finished while switching
                    applied = plan
                pipe = self.pipeline
                got = self._take()
                if got is None:
                    break
                items, real = got
                t0 = time.perf_counter()
                backlog = max(0.0, t0 - items[real - 1][2])  # the chunk's newest frame waited behind earlier chunks
                styled = pipe.process(np.stack([it[0] for it in items]))
                pending.extend((it[1], it[2], backlog, it[3]) for it in items[:real])
                pending.extend((None, None, 0.0, None) for _ in range(len(items) - real))  # padding: discarded
                cost = time.perf_counter() - t0
                self._chunk_times.append(cost)
                worst = self._emit(styled, pending)
                if sched is not None:
                    sched.observe(cost, plan=plan, latency_s=worst[0] if worst else None,
                                  wait_s=worst[1] if worst else None)
                self._stats.chunks += 1
            self._emit(self.pipeline.flush(), pending)
        except BaseException as e:  # surfaced to the caller by push/pull/stop
            with self._lock:
                self._error = e
                self._lock.notify_all()
        finally:
            with self._lock:
                self._stats.running = False
                self._lock.notify_all()

    def _apply_plan(self, plan: Plan) -> list[np.ndarray]:
        """Make the pipeline run `plan` from its next chunk; returns frames finished on the way. A resolution change
        flushes the stream and starts a new one at the new size (single device only)."""
        pipe = self.pipeline
        if plan.size != pipe.size and self._rebuild is not None:
            out = pipe.flush()
            with self._lock:
                controls = dataclasses.replace(pipe.next_controls, steps=plan.steps)
                self.pipeline = self._rebuild(plan.size, controls, plan.batch)
            pipe.close()
            return out
        with self._lock:
            if plan.steps != pipe.next_controls.steps:
                pipe.set_controls(steps=plan.steps)
        if plan.batch != pipe.batch:
            pipe.set_mode(plan.batch)
        return []

    def _emit(self, styled: list[np.ndarray], pending: collections.deque) -> tuple[float, float] | None:
        """Hand styled frames to the consumer, a chunk's frames together (one burst for a pacer); returns (latency,
        backlog) of the slowest real frame, if any."""
        ready = [(restore_frame(frame, shape, fit=self.config.fit) if tuple(shape[:2]) != frame.shape[:2] else frame,
                  t_push, backlog, pts)
                 for frame, (shape, t_push, backlog, pts) in zip(styled, [pending.popleft() for _ in styled])
                 if shape is not None]  # padding frames are discarded
        if not ready:
            return None
        now = time.perf_counter()
        budget, limit = self.config.latency_budget, self.config.queue_frames
        with self._lock:
            for out, t_push, _, pts in ready:
                if self.config.lossless and len(self._outq) >= limit:
                    # wait for a pull; while the caller is blocked in push() (a push-then-pull loop) it cannot
                    # pull, so the output may hold up to twice its size rather than both threads waiting forever
                    self._lock.notify_all()
                    self._lock.wait_for(lambda: len(self._outq) < limit or self._joining
                                        or (self._pushers and len(self._outq) < 2 * limit))
                if len(self._outq) >= (2 * limit if self.config.lossless and self._pushers else limit):
                    self._outq.popleft()
                    self._stats.dropped_out += 1
                self._outq.append((out, pts))
                self._lat.append(now - t_push)
                self._out_times.append(now)
                self._stats.frames_out += 1
                if budget is not None and now - t_push > budget:
                    self._stats.deadline_misses += 1
            if self._stats.ttff is None:
                self._stats.ttff = now - self._t_start
            self._lock.notify_all()
        t_push, backlog = min((t, b) for _, t, b, _ in ready)
        return now - t_push, backlog
