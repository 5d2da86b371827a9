"""A thread-safe obs-websocket v5 request client on obsws-python that reconnects with backoff.

    client = ObsClient(load_settings())
    info = client.connect()                      # EngineError subclasses name the fix (password, host, port)
    client.call("GetSourceScreenshot", {...})    # raw responseData dict; safe from any thread

obsws-python's ``ReqClient`` is synchronous and reads "the next message" as a request's response, so one
connection must never serve two threads at once: every call here holds a lock. A timed-out or broken request
closes the connection (a late answer would otherwise be read as the next response) and the next call opens a
fresh one. While OBS is away (closed, restarting) calls fail fast with :class:`ObsUnreachable` and reconnect
attempts are spaced by exponential backoff (0.25 s doubling to 5 s), so pollers never hammer OBS or block.

obsws-python logs its connection parameters, password included, at INFO, and logs tracebacks for every
refused request; its loggers are therefore silenced here so neither reaches the user (errors surface as ours).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import obsws_python as obsws
import websocket
from obsws_python.error import OBSSDKError, OBSSDKRequestError, OBSSDKTimeoutError
from sdv2_studio.obs_bridge.errors import (
    ENABLE_HINT,
    ObsAuthError,
    ObsCapabilityError,
    ObsError,
    ObsRequestError,
    ObsUnreachable,
)
from sdv2_studio.obs_bridge.settings import ObsSettings

log = logging.getLogger(__name__)


def quiet_obsws_logging() -> None:
    """Silence obsws-python's loggers: they print the password (INFO) and tracebacks (ERROR)."""
    lg = logging.getLogger("obsws_python")
    lg.propagate = False
    lg.setLevel(logging.CRITICAL + 1)  # no record is even created, whatever handlers others attach
    if not any(isinstance(h, logging.NullHandler) for h in lg.handlers):
        lg.addHandler(logging.NullHandler())


quiet_obsws_logging()

#: Errors that mean the connection is gone or unusable (as opposed to OBS refusing a request).
CONNECTION_ERRORS = (OSError, websocket.WebSocketException, OBSSDKTimeoutError, ValueError, KeyError)


class Backoff:
    """Delays for reconnect attempts: ``first`` seconds, doubling up to ``maximum``; ``reset()`` after success."""

    def __init__(self, first: float = 0.25, maximum: float = 5.0) -> None:
        self.first, self.maximum = first, maximum
        self._next = first

    def next_delay(self) -> float:
        delay, self._next = self._next, min(self.maximum, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


@dataclass(frozen=True)
class ObsInfo:
    """What this OBS offers (from ``GetVersion`` and ``GetInputKindList``)."""

    obs_version: str
    websocket_version: str
    rpc_version: int
    platform: str
    image_formats: tuple[str, ...]
    requests: frozenset[str]
    input_kinds: tuple[str, ...]  # versioned ids, e.g. color_source_v3

    def find_kind(self, *candidates: str) -> str | None:
        """The first candidate OBS has, as OBS names it (``color_source`` finds ``color_source_v3``)."""
        for want in candidates:
            for kind in self.input_kinds:
                if kind == want or re.fullmatch(re.escape(want) + r"_v\d+", kind):
                    return kind
        return None

    def require_kind(self, purpose: str, *candidates: str) -> str:
        """Like :meth:`find_kind` but raises :class:`ObsCapabilityError` naming what is missing."""
        kind = self.find_kind(*candidates)
        if kind is None:
            raise ObsCapabilityError(
                f"this OBS ({self.obs_version} on {self.platform}) has no {purpose} input "
                f"({' / '.join(candidates)}); install the OBS plugin that provides it or pick another output"
            )
        return kind

    def summary(self) -> str:
        return f"OBS {self.obs_version}, obs-websocket {self.websocket_version} on {self.platform}"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def connection_error(settings: ObsSettings, e: BaseException) -> ObsError:
    """The user-facing error for an exception raised while connecting to ``settings`` (re-raises non-Exceptions)."""
    addr = settings.address
    if isinstance(e, OBSSDKError):
        text = str(e)
        if "no password" in text:
            return ObsAuthError(f"OBS at {addr} requires a password: run `sdv2 obs set-password` or set "
                                "$SDV2_OBS_PASSWORD (Tools > WebSocket Server Settings > Show Connect Info)")
        if "identify" in text:
            return ObsAuthError(f"OBS at {addr} rejected the password (4009 authentication failed): copy it "
                                "from Tools > WebSocket Server Settings > Show Connect Info and run "
                                "`sdv2 obs set-password`")
        return ObsUnreachable(f"OBS at {addr} closed the connection during the handshake; "
                              "check that it is obs-websocket 5 (OBS 28 or newer)")
    if isinstance(e, ConnectionRefusedError):
        return ObsUnreachable(f"nothing answers at {addr} (connection refused): start OBS and {ENABLE_HINT} "
                              f"on port {settings.port}, or fix the host/port")
    if isinstance(e, (socket.gaierror, websocket.WebSocketAddressException)):
        return ObsUnreachable(f"unknown host {settings.host!r}: check the OBS host name (usually 127.0.0.1)")
    if isinstance(e, (TimeoutError, socket.timeout, websocket.WebSocketTimeoutException)):
        return ObsUnreachable(f"no answer from {addr} within {settings.timeout:g} s: check the host and "
                              f"port, and that OBS runs with its WebSocket server enabled")
    if isinstance(e, (websocket.WebSocketException, ValueError, KeyError)):
        return ObsUnreachable(f"{addr} answered but is not obs-websocket 5: check the port "
                              "(OBS 28+ uses 4455 by default)")
    if isinstance(e, OSError):
        reason = e.strerror or type(e).__name__
        return ObsUnreachable(f"cannot reach OBS at {addr} ({reason}): check the host and the network")
    if isinstance(e, Exception):
        return ObsUnreachable(f"cannot connect to OBS at {addr} ({type(e).__name__}: {e})")
    raise e  # KeyboardInterrupt and friends


def check_login(settings: ObsSettings) -> bool:
    """Log in to OBS once with ``settings`` (to check a password before it is saved): True when OBS accepted it,
    False when nothing answers (so it could not be checked); :class:`ObsAuthError` when OBS refuses it."""
    client = ObsClient(settings, auto_reconnect=False)
    try:
        client.connect()
    except ObsAuthError:
        raise
    except ObsUnreachable:
        return False
    finally:
        client.close()
    return True


class ObsClient:
    """Thread-safe obs-websocket client (see module docstring).

    ``auto_reconnect`` (default) reopens a lost connection on the next call, no sooner than the backoff allows.
    ``on_reconnect`` callbacks run (in the calling thread, errors logged) after each successful *re*-connect,
    e.g. to re-create an input OBS lost when it was killed.
    """

    def __init__(self, settings: ObsSettings, *, auto_reconnect: bool = True, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.auto_reconnect = auto_reconnect
        self.backoff = backoff or Backoff()
        self.info: ObsInfo | None = None
        self.reconnects = 0
        self.last_error: str | None = None
        self.on_reconnect: list[Callable[[ObsClient], None]] = []
        self._clock = clock
        self._lock = threading.RLock()
        self._req: obsws.ReqClient | None = None
        self._next_attempt = 0.0
        self._ever_connected = False
        self._closed = False
        self._in_callbacks = False

    # -- connection ---------------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._req is not None

    def connect(self) -> ObsInfo:
        """Open the connection now (no backoff) and check OBS; raises ObsError subclasses naming the fix."""
        with self._lock:
            self._closed = False
            if self._req is None:
                self._open()
            assert self.info is not None
            return self.info

    def close(self) -> None:
        """Disconnect. Calls raise :class:`ObsUnreachable` until :meth:`connect` opens a new connection."""
        with self._lock:
            self._closed = True
            self._drop()

    def __enter__(self) -> ObsClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self) -> None:
        req, self._req = self._req, None
        if req is not None:
            try:
                req.disconnect()
            except Exception:  # already broken; nothing left to release
                pass

    def _open(self) -> None:
        s = self.settings
        try:
            req = obsws.ReqClient(host=s.host, port=s.port, password=s.password, timeout=s.timeout)
        except BaseException as e:
            err = connection_error(self.settings, e)
            self.last_error = str(err)
            raise err from None
        self._req = req
        try:
            self.info = self._read_info()
        except BaseException:
            self._drop()
            raise
        reconnect = self._ever_connected
        self._ever_connected = True
        self.backoff.reset()
        self.last_error = None
        log.info("connected to %s at %s", self.info.summary(), s.address)
        if reconnect:
            self.reconnects += 1
            self._run_reconnect_callbacks()

    def _run_reconnect_callbacks(self) -> None:
        if self._in_callbacks:
            return
        self._in_callbacks = True
        try:
            for fn in list(self.on_reconnect):
                try:
                    fn(self)
                except Exception as e:  # a callback must not break the call that reconnected
                    log.warning("after reconnecting to OBS: %s", e)
        finally:
            self._in_callbacks = False

    def _read_info(self) -> ObsInfo:
        v = self._raw("GetVersion")
        ws_version = str(v.get("obsWebSocketVersion", "0"))
        if _version_tuple(ws_version)[:1] < (5,):
            raise ObsCapabilityError(f"obs-websocket {ws_version} is too old: use OBS 28 or newer")
        kinds = self._raw("GetInputKindList", {"unversioned": False}).get("inputKinds", [])
        return ObsInfo(
            obs_version=str(v.get("obsVersion", "?")),
            websocket_version=ws_version,
            rpc_version=int(v.get("rpcVersion", 1)),
            platform=str(v.get("platform", "?")),
            image_formats=tuple(v.get("supportedImageFormats", ())),
            requests=frozenset(v.get("availableRequests", ())),
            input_kinds=tuple(kinds),
        )

    def _raw(self, request: str, data: dict | None = None) -> dict:
        assert self._req is not None
        try:
            out = self._req.send(request, data, raw=True)
        except OBSSDKRequestError as e:
            comment = str(e).split("With message: ", 1)[1] if "With message: " in str(e) else None
            raise ObsRequestError(request, int(e.code), comment) from None
        return out or {}

    def _ensure_open(self) -> None:
        if self._req is not None:
            return
        addr = self.settings.address
        if self._closed:
            raise ObsUnreachable(f"the connection to OBS at {addr} was closed; connect again")
        if self._ever_connected and not self.auto_reconnect:
            raise ObsUnreachable(f"lost the connection to OBS at {addr}; reconnect (is OBS still running?)")
        now = self._clock()
        if now < self._next_attempt:
            raise ObsUnreachable(f"OBS at {addr} is not reachable ({self.last_error or 'connection lost'}); "
                                 f"retrying in {self._next_attempt - now:.1f} s")
        try:
            self._open()
        except ObsError:
            self._next_attempt = self._clock() + self.backoff.next_delay()
            raise

    # -- requests -----------------------------------------------------------------------------------------------------

    def call(self, request: str, data: dict | None = None) -> dict:
        """Send one request and return its ``responseData`` (``{}`` if none).

        Raises :class:`ObsRequestError` when OBS refuses the request and :class:`ObsUnreachable` when OBS cannot
        be reached (after one immediate reconnect attempt if an established connection broke)."""
        with self._lock:
            self._ensure_open()
            try:
                return self._raw(request, data)
            except CONNECTION_ERRORS as e:
                self._lost(e)
            # the connection broke under this request: one immediate retry on a fresh connection
            self._ensure_open()
            try:
                return self._raw(request, data)
            except CONNECTION_ERRORS as e:
                self._lost(e)
                raise ObsUnreachable(f"lost the connection to OBS at {self.settings.address} ({self.last_error}); "
                                     "is OBS still running?") from None

    def _lost(self, e: BaseException) -> None:
        self.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        log.info("connection to OBS lost: %s", self.last_error)
        self._drop()
        self._next_attempt = 0.0 if self.auto_reconnect else float("inf")

    def try_call(self, request: str, data: dict | None = None) -> dict | None:
        """:meth:`call`, but None instead of raising when OBS is unreachable (OBS refusals still raise)."""
        try:
            return self.call(request, data)
        except ObsUnreachable:
            return None

    def wait_connected(self, timeout: float, poll: float = 0.1) -> bool:
        """Retry (respecting the backoff) until connected or ``timeout`` seconds pass; True if connected."""
        deadline = self._clock() + timeout
        while True:
            with self._lock:
                try:
                    self._ensure_open()
                    return True
                except ObsUnreachable:
                    pass
                wait = max(0.0, min(self._next_attempt, deadline) - self._clock())
            if self._clock() >= deadline:
                return False
            time.sleep(max(poll, wait) if wait else poll)

    # -- helpers ------------------------------------------------------------------------------------------------------

    def require_requests(self, names: Iterable[str]) -> None:
        """Raise ObsCapabilityError if this obs-websocket lacks any of the named requests."""
        info = self.connect()
        missing = [n for n in names if info.requests and n not in info.requests]
        if missing:
            raise ObsCapabilityError(f"obs-websocket {info.websocket_version} lacks {', '.join(missing)}: "
                                     "update OBS to a newer version")

    def scene_names(self) -> list[str]:
        return [s["sceneName"] for s in self.call("GetSceneList").get("scenes", [])][::-1]  # OBS lists bottom-up

    def input_names(self) -> list[tuple[str, str]]:
        """(name, versioned kind) of every input."""
        return [(i["inputName"], i.get("inputKind", "")) for i in self.call("GetInputList").get("inputs", [])]

