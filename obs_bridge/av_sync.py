"""Audio/video sync: the styled video lags the live audio by the engine's latency, so the audio inputs the user picks
are delayed by the same amount in OBS (``SetInputAudioSyncOffset``), and again whenever the measured latency moves
by more than a frame (:class:`SyncTracker`), never on every small wobble.

    inputs = audio_inputs(client)                        # OBS inputs that carry audio (not the styled source)
    set_audio_offset(client, ["Mic/Aux"], 420)           # delay them by 420 ms
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sdv2_studio.obs_bridge.errors import ObsRequestError

if TYPE_CHECKING:  # the app imports SyncTracker without the obs extras installed
    from sdv2_studio.obs_bridge.client import ObsClient

MAX_OFFSET_MS = 20_000  # OBS's limit for an input's sync offset


def audio_inputs(client: ObsClient, exclude: Iterable[str] | None = None) -> list[str]:
    """Names of OBS inputs with audio (those OBS gives a sync offset for), minus ``exclude`` (default: the styled
    source)."""
    from sdv2_studio.obs_bridge.output import INPUT_NAME

    skip = {INPUT_NAME} if exclude is None else set(exclude)
    found = []
    for name, _kind in client.input_names():
        if name in skip:
            continue
        try:
            client.call("GetInputAudioSyncOffset", {"inputName": name})
        except ObsRequestError:  # a video-only input: OBS has no audio settings for it
            continue
        found.append(name)
    return found


def set_audio_offset(client: ObsClient, inputs: Iterable[str], offset_ms: int) -> None:
    """Delay the audio of ``inputs`` by ``offset_ms`` (clamped to 0..MAX_OFFSET_MS)."""
    offset = max(0, min(MAX_OFFSET_MS, int(offset_ms)))
    for name in inputs:
        client.call("SetInputAudioSyncOffset", {"inputName": name, "inputAudioSyncOffset": offset})


class SyncTracker:
    """Decides when the audio offset follows the measured latency: the first figure, then a move of more than one
    frame (``frame_s``) from the offset last applied."""

    def __init__(self, frame_s: float) -> None:
        self.frame_ms = max(1.0, frame_s * 1e3)
        self.applied_ms: int | None = None

    def update(self, latency_s: float) -> int | None:
        """The offset (ms) to apply now, or None to keep the current one."""
        ms = round(latency_s * 1e3)
        if ms <= 0 or (self.applied_ms is not None and abs(ms - self.applied_ms) <= self.frame_ms):
            return None
        self.applied_ms = ms
        return ms
