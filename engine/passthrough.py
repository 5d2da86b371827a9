"""The `passthrough` model's pipeline: frames come out exactly as they went in, no network runs.

`resolve_model("passthrough")` names it, `load_bundle` loads nothing for it, and `Engine.start` builds this pipeline
in place of `StreamPipeline`. Everything around the pipeline stays the same: the engine's queues and chunking (5
frames, then 4), its latency statistics, the session's pacing and outputs. So a user can check the wiring (source ->
engine -> OBS / virtual camera / file) without weights, and `sdv2 bench transport` measures the transport apart
from the model. Controls (prompts, presets, steps) are accepted, checked and ignored.
"""

from __future__ import annotations

import numpy as np
from sdv2_studio.engine.config import CacheConfig, Controls
from sdv2_studio.engine.pipeline import ChunkedStream


class PassthroughPipeline(ChunkedStream):
    """The StreamPipeline interface the engine uses (engine/api.py), with the identity as the model. Controls set
    (checked by `Controls`) are taken at the next chunk, as a model would, and not used."""

    def __init__(self, size: tuple[int, int], controls: Controls = Controls(), batch: bool = True,
                 cache_cfg: CacheConfig = CacheConfig()):
        self.size, self.controls, self.batch = tuple(size), controls, batch
        self.first_pixels, self.chunk_pixels = cache_cfg.first_pixels, cache_cfg.chunk_pixels
        self.executor = self  # nothing runs elsewhere: `utilisation` below is the executor's only use
        self.chunks = 0
        self._pending: Controls | None = None

    def set_mode(self, batch: bool) -> None:
        self.batch = bool(batch)

    def warm_prompts(self, prompts) -> None:
        """No text encoder: nothing to warm."""

    def process(self, frames: np.ndarray) -> list[np.ndarray]:
        """One chunk of exactly `frames_needed` uint8 frames [T, H, W, 3] at the pipeline size, returned as is."""
        self.check_chunk(frames)
        if self._pending is not None:
            self.controls, self._pending = self._pending, None
        self.chunks += 1
        return list(frames)

    def flush(self) -> list[np.ndarray]:
        return []  # nothing is ever in flight

    def close(self) -> None:
        pass

    def utilisation(self) -> list[float]:
        return []
