"""The text encoder's weights in a child process at the lowest CPU priority, for live streams on the CPU.

Why a process: an uncached prompt typed live is encoded while the stream goes on (`StreamPipeline`'s background
prompts). In a thread of the engine's process that encode competes with the DiT for the same cores and for the
GIL, and a thread cannot be given a lower priority than the engine (nice applies to the whole process on most
systems, and the GIL hands the interpreter back and forth regardless): measured on 2 cores, chunks took 1.65-3.7x
the median while a slow prompt encoded. A child process at nice 19 (Windows: idle priority class) runs only on
the CPU time the engine leaves (between chunks, while the engine waits for frames or the device), and holds no
lock the engine needs.

The child builds the encoder from its *recipe* (a picklable call that loads the same weights again, e.g.
``functools.partial(load_text_encoder, path, ...)``), so the parent frees its own copy first and the weights
are held once. The parent tokenises (cheap, no weights) and sends the real-token ids; the child runs the forward
and sends the states back. Tensors travel as ``torch.save`` bytes over a pipe (ids: a few hundred bytes; states:
n x text_dim, ~160 KB for a 20-token prompt at umT5-XXL width). The child exits when the parent closes it, when
the pipe breaks (the parent died), or with the parent (daemon). A child that fails to start or dies is one
`EngineError` line naming why (its own error line, or its exit code), never a wait without end.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable

import torch
from sdv2_studio.engine.errors import EngineError

__all__ = ["EncoderProcess", "lower_priority"]

START_TIMEOUT_S = 3600.0  # reading umT5-XXL (11 GB) from a slow disk at the lowest priority; checked every 0.5 s


def _pack(t: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(t.contiguous(), buf)
    return buf.getvalue()


def _unpack(data: bytes) -> torch.Tensor:
    return torch.load(io.BytesIO(data), weights_only=True)


def lower_priority() -> None:
    """This process at the lowest CPU priority: nice 19 on POSIX, the idle priority class on Windows."""
    if hasattr(os, "nice"):
        os.nice(19 - os.nice(0))
    elif sys.platform == "win32":  # pragma: no cover - Windows only
        import ctypes

        kernel32 = ctypes.windll.kernel32
        kernel32.SetPriorityClass(kernel32.GetCurrentProcess(), 0x00000040)  # IDLE_PRIORITY_CLASS


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text and isinstance(e, EngineError) else f"{type(e).__name__}: {' '.join(text)}"


def _serve(recipe: Callable, conn, threads: int) -> None:
    """The child: load the weights from `recipe`, then answer ids with states until told to stop."""
    lower_priority()
    torch.set_num_threads(threads)
    try:
        model = recipe().model
    except BaseException as e:  # reported to the parent as its one line
        conn.send_bytes(b"E" + _one_line(e).encode())
        return
    conn.send_bytes(b"R")
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):  # the parent is gone
            return
        if not msg:  # close()
            return
        try:
            with torch.inference_mode():
                out = model(_unpack(msg))
            conn.send_bytes(b"O" + _pack(out))
        except Exception as e:
            conn.send_bytes(b"E" + _one_line(e).encode())


class EncoderProcess:
    """A text encoder's forward pass (``ids [1, n] int64 -> states [1, n, text_dim]``) in a low-priority child
    process; one request at a time (callers are serialised by a lock). Started by the constructor, which returns at
    once; the first `forward` waits until the weights are loaded."""

    def __init__(self, recipe: Callable, *, threads: int | None = None):
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs torch threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(recipe, child, threads or torch.get_num_threads()),
                                 name="sdv2-text-encoder", daemon=True)
        self._proc.start()
        child.close()
        self._ready = False
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def _gone(self, what: str) -> EngineError:
        self._proc.join(5)  # a broken pipe comes a moment before the exit code
        return EngineError(f"the text encoder process ended (exit code {self._proc.exitcode}) while {what}; if the "
                           "machine ran out of memory, close other programs or use a smaller text encoder file")

    def _receive(self, what: str, timeout: float | None = None) -> bytes:
        waited = 0.0
        while not self._conn.poll(0.5):  # a wait that notices a child that died
            waited += 0.5
            if not self._proc.is_alive():
                if self._conn.poll(0):  # its last words arrived before it ended
                    break
                raise self._gone(what)
            if timeout is not None and waited >= timeout:
                raise EngineError(f"the text encoder process did not answer within {timeout:.0f} s while {what}")
        try:
            msg = self._conn.recv_bytes()
        except (EOFError, OSError):
            raise self._gone(what) from None
        if msg[:1] == b"E":
            raise EngineError(msg[1:].decode(errors="replace"))
        return msg

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """States of the real-token `ids` ([1, n] int64 on the CPU), computed in the child."""
        with self._lock:
            if not self._ready:
                self._receive("loading the weights", START_TIMEOUT_S)
                self._ready = True
            try:
                self._conn.send_bytes(_pack(ids.cpu()))
            except OSError:
                raise self._gone("encoding a prompt") from None
            return _unpack(self._receive("encoding a prompt")[1:])

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child (its weights are freed with it). Safe to call twice."""
        with self._lock:
            if self._proc.is_alive():
                try:
                    self._conn.send_bytes(b"")
                except (BrokenPipeError, OSError):
                    pass
                self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout)
            self._conn.close()
