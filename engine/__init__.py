"""StreamDiffusionV2 streaming engine: causal Wan2.1 DiT, rolling KV cache, streaming pipeline.

Qt-free and OBS-free by contract (import-linter, see pyproject.toml).
"""

from sdv2_studio.engine.config import PRESETS, CacheConfig, ModelConfig
from sdv2_studio.engine.errors import EngineError

__all__ = ["PRESETS", "CacheConfig", "EngineError", "ModelConfig"]
