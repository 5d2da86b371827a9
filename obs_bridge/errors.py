"""User-facing OBS errors: each is an :class:`~engine.errors.EngineError` with one line that names the fix."""

from __future__ import annotations

from sdv2_studio.engine.errors import EngineError

ENABLE_HINT = "enable its WebSocket server (Tools > WebSocket Server Settings)"


class ObsError(EngineError):
    """Any problem talking to OBS."""


class ObsUnreachable(ObsError):
    """Nothing (or not obs-websocket) answers at host:port, or the connection was lost."""


class ObsAuthError(ObsError):
    """OBS rejected the password (close code 4009) or needs one that was not given."""


class ObsRequestError(ObsError):
    """OBS answered a request with an error status (``code``: 600 not found, 601 exists, 604 not available...)."""

    def __init__(self, request: str, code: int, comment: str | None) -> None:
        self.request, self.code, self.comment = request, code, comment
        detail = f": {comment}" if comment else ""
        super().__init__(f"OBS refused {request} (code {code}{detail})")


class ObsCapabilityError(ObsError):
    """This OBS lacks something the bridge needs (an input kind, a request, an image format, the virtual camera)."""
