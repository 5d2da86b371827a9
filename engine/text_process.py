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
the pipe breaks (the parent died), or with the parent (daemon); it ignores Ctrl-C (the parent handles it). A child
that fails to load or dies is one `EngineError` line naming why (its own error line, or its exit code). The price of
the lowest priority: on a CPU that other work keeps fully busy, a background encode waits for idle time (the stream
keeps its prompt meanwhile). On Windows the child lowers itself once it runs (its interpreter starts at normal
priority).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import sys
import threading
from collections.abc import Callable

from sdv2_studio.engine.errors import EngineError  # (torch is imported inside: the child lowers its priority first)

__all__ = ["EncoderProcess", "lower_priority"]

START_TIMEOUT_S = 3600.0  # reading umT5-XXL (11 GB) from a slow disk at the lowest priority; checked every 0.5 s


def _pack(t) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(t.contiguous(), buf)
    return buf.getvalue()


def _unpack(data: bytes):
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def lower_priority(pid: int = 0) -> None:
    """Process `pid` (0: this one) at the lowest CPU priority: Linux's SCHED_IDLE class (it runs only on CPU time
    no other task wants) and nice 19 on POSIX; the idle priority class on Windows (this process only)."""
    if hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, 19)
        except OSError:  # it has just ended
            pass
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        except OSError:  # not allowed in some containers (nice 19 remains), or it has just ended
            pass
    elif sys.platform == "win32" and pid == 0:  # pragma: no cover - Windows only
        import ctypes

        kernel32 = ctypes.windll.kernel32
        kernel32.SetPriorityClass(kernel32.GetCurrentProcess(), 0x00000040)  # IDLE_PRIORITY_CLASS


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text and isinstance(e, EngineError) else f"{type(e).__name__}: {' '.join(text)}"


def _serve(conn, threads: int, lowest: bool) -> None:
    """The child: at the lowest priority before any heavy work (`lowest`), import torch and wait; a message is the
    pickled recipe while no weights are loaded (the parent has freed its copy; the answer names the weights
    loaded), then ids to encode; an empty one ends it. Ctrl-C is the parent's to handle (it ends the child)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if lowest:
        lower_priority()
    import torch

    torch.set_num_threads(threads)
    model = None
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):  # the parent is gone
            return
        if not msg:  # close()
            return
        try:
            if model is None:  # (after a failed load the parent may send the recipe again)
                encoder = pickle.loads(msg)()
                model = encoder.model
                conn.send_bytes(b"R" + encoder.model_id.encode())
                continue
            with torch.inference_mode():
                out = model(_unpack(msg))
            conn.send_bytes(b"O" + _pack(out))
        except BaseException as e:  # reported to the parent as its one line
            conn.send_bytes(b"E" + _one_line(e).encode())


class EncoderProcess:
    """A text encoder's forward pass (``ids [1, n] int64 -> states [1, n, text_dim]``) in a low-priority child
    process; one request at a time (callers are serialised by a lock). The constructor starts the child and returns
    at once (its interpreter and torch load meanwhile, at the lowest priority); the weights load on the first
    `forward`, from `recipe`, after the caller has freed its own copy. The child runs `threads` torch threads (1: an
    idle-class thread disturbs one core at most). `model_id`: the weights the caller had (`TextEncoder.model_id`); a
    child that loads other ones (the file changed on disk meanwhile) is refused. `lowest=False` keeps the child at
    normal priority (tests on a shared machine, where an idle-class child may wait without end)."""

    def __init__(self, recipe: Callable, model_id: str, *, threads: int = 1, lowest: bool = True):
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs torch threads
        self._recipe, self.model_id = pickle.dumps(recipe), model_id
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, threads, lowest), name="sdv2-text-encoder", daemon=True)
        self._proc.start()
        if lowest:  # at once: its interpreter's start-up must not compete with the engine either (POSIX)
            lower_priority(self._proc.pid)
        child.close()
        self._ready = False
        self._lock = threading.Lock()
        import torch

        _unpack(_pack(torch.zeros(1)))  # torch.save/load's first call imports and sets up; not in a stream's middle

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def _gone(self, what: str) -> EngineError:
        self._proc.join(5)  # a broken pipe comes a moment before the exit code
        code = self._proc.exitcode
        hint = ("; if the machine ran out of memory, close other programs or use a smaller (fp8) text encoder file"
                if code in (-9, 137) else "; the next prompt starts a new one")
        return EngineError(f"the text encoder process ended (exit code {code}) while {what}{hint}")

    def _receive(self, what: str, timeout: float | None = None) -> bytes:
        waited = 0.0
        while not self._conn.poll(0.5):  # a wait that notices a child that died
            waited += 0.5
            if not self._proc.is_alive():
                if self._conn.poll(0):  # its last words arrived before it ended
                    break
                raise self._gone(what)
            if timeout is not None and waited >= timeout:
                raise EngineError(f"the text encoder process did not answer within {timeout:.0f} s while {what}; "
                                  "the CPU had no idle time for it: lower the stream's load (steps, size) or "
                                  "restart the stream")
        try:
            msg = self._conn.recv_bytes()
        except (EOFError, OSError):
            raise self._gone(what) from None
        if msg[:1] == b"E":
            raise EngineError(msg[1:].decode(errors="replace"))
        return msg

    def forward(self, ids):
        """States of the real-token `ids` ([1, n] int64 on the CPU), computed in the child."""
        with self._lock:
            if not self._ready:
                try:
                    self._conn.send_bytes(self._recipe)
                except OSError:
                    raise self._gone("loading the weights") from None
                loaded = self._receive("loading the weights", START_TIMEOUT_S)[1:].decode()
                if loaded != self.model_id:
                    raise EngineError(f"the text encoder file changed on disk since it was loaded ({loaded} is not "
                                      f"{self.model_id}); restart the stream to load the new one")
                self._ready = True
            try:
                self._conn.send_bytes(_pack(ids.cpu()))
            except OSError:
                raise self._gone("encoding a prompt") from None
            return _unpack(self._receive("encoding a prompt")[1:])

    def close(self, timeout: float = 10.0) -> None:
        """Stop the child (its weights are freed with it); a forward under way is cut short (it raises). Safe to
        call twice."""
        if not self._lock.acquire(blocking=False):  # a forward waits for the child: end the child, not the wait
            self._proc.kill()
            self._lock.acquire()
        try:
            if self._proc.is_alive():
                try:
                    self._conn.send_bytes(b"")
                except OSError:
                    pass
                self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout)
            self._conn.close()
        finally:
            self._lock.release()
