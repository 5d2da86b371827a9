"""OBS health readout from ``GetStats``: is OBS keeping up while the model runs next to it?"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sdv2_studio.obs_bridge.client import ObsClient


@dataclass(frozen=True)
class ObsHealth:
    """One ``GetStats`` sample. Skipped-frame ratios are since OBS started."""

    active_fps: float
    render_ms: float  # average time OBS needs to render a frame
    render_skipped: int  # frames the renderer missed (GPU/CPU too busy)
    render_total: int
    output_skipped: int  # frames the encoder/output missed (streaming or recording)
    output_total: int
    cpu_percent: float
    memory_mb: float

    @classmethod
    def from_stats(cls, s: dict) -> ObsHealth:
        return cls(
            active_fps=float(s.get("activeFps", 0.0)),
            render_ms=float(s.get("averageFrameRenderTime", 0.0)),
            render_skipped=int(s.get("renderSkippedFrames", 0)),
            render_total=int(s.get("renderTotalFrames", 0)),
            output_skipped=int(s.get("outputSkippedFrames", 0)),
            output_total=int(s.get("outputTotalFrames", 0)),
            cpu_percent=float(s.get("cpuUsage", 0.0)),
            memory_mb=float(s.get("memoryUsage", 0.0)),
        )

    @property
    def render_skipped_ratio(self) -> float:
        return self.render_skipped / self.render_total if self.render_total else 0.0

    @property
    def output_skipped_ratio(self) -> float:
        return self.output_skipped / self.output_total if self.output_total else 0.0

    def warnings(self, target_fps: float | None = None) -> list[str]:
        """Plain-language problems worth showing the user (empty when healthy)."""
        out = []
        if target_fps and self.active_fps < 0.9 * target_fps:
            out.append(f"OBS renders {self.active_fps:.1f} fps instead of {target_fps:g}: the model and OBS compete "
                       "for the GPU/CPU; lower the model resolution or steps")
        if self.render_total > 300 and self.render_skipped_ratio > 0.05:
            out.append(f"OBS skipped {self.render_skipped_ratio:.0%} of rendered frames (render lag)")
        if self.output_total > 300 and self.output_skipped_ratio > 0.05:
            out.append(f"OBS skipped {self.output_skipped_ratio:.0%} of encoded frames (encoder overloaded)")
        return out

    def line(self) -> str:
        return (f"OBS {self.active_fps:.1f} fps, render {self.render_ms:.1f} ms, skipped {self.render_skipped}/"
                f"{self.render_total} rendered, {self.output_skipped}/{self.output_total} output, "
                f"CPU {self.cpu_percent:.0f}%")

    def as_dict(self) -> dict:
        return asdict(self)


def read_health(client: ObsClient) -> ObsHealth:
    """Sample ``GetStats`` now."""
    return ObsHealth.from_stats(client.call("GetStats"))
