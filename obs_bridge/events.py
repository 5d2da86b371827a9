"""obs-websocket events (scene switches, OBS exiting, ...) with automatic reconnection.

obsws-python's ``EventClient`` reads events on a daemon thread that simply ends when OBS goes away. ``ObsEvents``
supervises it: when the connection drops it reconnects with backoff (0.25 s doubling to 5 s) and calls
``on_connect`` again, so handlers keep working across OBS restarts. Handlers get the event data as a dict with
snake_case keys (``data["scene_name"]``) and run on the event thread: keep them short; their exceptions are
logged, never allowed to kill the thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import obsws_python as obsws
from obsws_python.util import to_snake_case
from sdv2_studio.obs_bridge.client import Backoff, connection_error, quiet_obsws_logging
from sdv2_studio.obs_bridge.errors import ObsAuthError, ObsError
from sdv2_studio.obs_bridge.settings import ObsSettings

log = logging.getLogger(__name__)

Handler = Callable[[dict], None]


class ObsEvents:
    """Calls ``handlers[EventName](data)`` for OBS events until :meth:`stop`, reconnecting as needed.

    ``on_connect(first)`` runs on the supervisor thread after every (re)connection, e.g. to read the current
    scene. A wrong password stops the supervisor (retrying cannot fix it); see ``last_error``.
    """

    def __init__(self, settings: ObsSettings, handlers: Mapping[str, Handler], *,
                 on_connect: Callable[[bool], None] | None = None, backoff: Backoff | None = None) -> None:
        quiet_obsws_logging()
        self.settings = settings
        self.handlers = dict(handlers)
        self.on_connect = on_connect
        self.backoff = backoff or Backoff()
        self.connects = 0
        self.last_error: str | None = None
        self._client: obsws.EventClient | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> ObsEvents:
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name="obs-events", daemon=True)
            self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _callbacks(self) -> list[Callable]:
        """obsws-python dispatches by function name (``on_<snake_case_event>``)."""
        fns = []
        for event, handler in self.handlers.items():
            def fn(obj, _handler=handler, _event=event) -> None:
                data = {name: getattr(obj, name) for name in obj.attrs()}
                try:
                    _handler(data)
                except Exception as e:  # a handler bug must not end event delivery
                    log.warning("OBS event %s handler failed: %s: %s", _event, type(e).__name__, e)
            fn.__name__ = f"on_{to_snake_case(event)}"
            fns.append(fn)
        return fns

    def _connect(self) -> obsws.EventClient:
        s = self.settings
        try:
            return obsws.EventClient(host=s.host, port=s.port, password=s.password, timeout=s.timeout)
        except BaseException as e:
            if not isinstance(e, Exception):
                raise
            raise connection_error(s, e) from None

    def _supervise(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                client = self._connect()
            except ObsAuthError as e:
                self.last_error = str(e)
                log.warning("OBS events stopped: %s", e)
                return
            except ObsError as e:
                self.last_error = str(e)
                self._stop.wait(self.backoff.next_delay())
                continue
            self._client = client
            client.callback.register(self._callbacks())
            self.backoff.reset()
            self.connects += 1
            self.last_error = None
            self._connected.set()
            if self.on_connect is not None:
                try:
                    self.on_connect(first)
                except Exception as e:  # e.g. OBS vanished again right away; the loop notices
                    log.warning("after connecting to OBS events: %s", e)
            first = False
            while not self._stop.is_set() and client.worker.is_alive():
                client.worker.join(0.2)
            self._connected.clear()
            self._client = None
            try:
                client.base_client.ws.close()
            except Exception:  # already closed by the server
                pass
            if not self._stop.is_set():
                self.last_error = "connection to OBS lost"
                log.info("OBS events: connection lost, reconnecting")
                self._stop.wait(self.backoff.next_delay())

    def stop(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            try:
                client.base_client.ws.close()
            except Exception:  # closing a dead socket
                pass
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout + 1)
        self._connected.clear()
