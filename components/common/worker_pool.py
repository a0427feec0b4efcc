"""A pool of pre-warmed worker processes, forked from a zygote, for calls with a time bound.

Why processes: some calls can run for ever (sympy on model output) in C code that no signal
interrupts from inside, and signal-based timeouts only work in the main thread. A call runs in
a worker that the caller waits on for at most its time bound; on overrun the worker is killed.

Why a zygote: the workers need heavy imports (sympy, math-verify: 2-3 s). The zygote, a
fresh interpreter, imports and warms them once (its ``warm_up`` function); workers are forked
from it in a few ms, with everything imported and caches warm. A spawner thread forks
replacements for killed workers while callers go on with the others.

Why not ``multiprocessing``'s spawn or forkserver: both re-run the caller's ``__main__`` in the
child (breaking scripts without an ``if __name__ == "__main__"`` guard, and importing torch
into the worker), and neither starts from daemonic processes such as Pool workers. Not fork
of the caller: forking a process that holds torch/CUDA state or threads is unsafe. The zygote
is a plain subprocess that imports only the warm-up's module and holds no threads, so forking
it is safe. Every process here ignores Ctrl-C (the caller's), exits when the caller's end of
its socket closes, and a worker also dies by its own alarm shortly after its time bound, so
nothing outlives a killed caller for long.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing import reduction
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0
"""How long a call waits for the pool to start (the zygote's imports); not part of a time bound."""

MAX_WORKERS = 8
"""Workers per pool at most: more rarely helps and each holds ~100 MB."""

HARD_LIMIT_MARGIN_S = 1.0
"""A worker kills itself this long after its time bound if its caller did not (caller gone)."""

Connection = multiprocessing.connection.Connection

_READY = "ready"
_ZYGOTE_COMMAND = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    f"from {__name__} import _zygote_main; _zygote_main(int(sys.argv[2]), sys.argv[3])"
)


def _zygote_main(fd: int, warm_up: str) -> None:
    """Entry point of the zygote: run ``warm_up`` ("module:function", it imports what the
    workers need), then fork one worker per socket handle received."""
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    module, function = warm_up.split(":")
    getattr(importlib.import_module(module), function)()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited workers
    conn.send(_READY)
    while True:
        try:
            handle = reduction.recv_handle(conn)
        except (EOFError, OSError):  # the caller is gone
            return
        pid = os.fork()
        if pid == 0:
            conn.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _serve(Connection(handle))
            finally:
                os._exit(0)
        os.close(handle)
        conn.send(pid)


def _serve(conn: Connection) -> None:
    """Worker loop: ``fn(*args)`` per request, replying ``("ok", result)`` or ``("raised", text)``.

    Each request carries a hard limit: SIGALRM (default action: terminate) ends a worker
    whose caller vanished without killing it.
    """
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    conn.send(_READY)
    while True:
        try:
            fn, args, hard_limit_s = conn.recv()
        except (EOFError, OSError):  # the caller is gone
            return
        signal.setitimer(signal.ITIMER_REAL, hard_limit_s)
        try:
            reply = ("ok", fn(*args))
        except Exception as exc:  # sent to the caller, which raises it there
            reply = ("raised", f"{type(exc).__name__}: {exc}")
        signal.setitimer(signal.ITIMER_REAL, 0)
        conn.send(reply)


class WorkerError(RuntimeError):
    """The function run in a worker raised; the message is its exception."""


class _Worker(NamedTuple):
    pid: int
    conn: Connection
    pidfd: int | None  # signals reach this process even if its pid is reused


def default_size() -> int:
    """One worker per CPU this process may use, at most MAX_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


class WorkerPool:
    """Workers forked from one zygote; a spawner thread starts the zygote and replaces workers.

    Callers take an idle worker, send one request, and either get the reply within the time
    bound (the worker goes back to the idle list) or kill the worker (the spawner forks a
    replacement). A spawner failure (a failed import, a zygote crash) is raised in every caller
    waiting at that moment; the next call tries again.
    """

    def __init__(self, size: int, warm_up: str) -> None:
        self.size = size
        self.warm_up_spec = warm_up
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0  # idle + busy workers
        self._wanted = 0  # replacements the spawner still has to make
        self._failure: tuple[int, str] = (0, "")  # (how many so far, the last message)
        self._closed = False
        self._spawner: threading.Thread | None = None
        self._zygote: subprocess.Popen | None = None
        self._zygote_conn: Connection | None = None
        self.stats = Counter(interpreter_starts=0, worker_forks=0)

    # -- callers

    def run(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> tuple[str, Any]:
        """``("ok", fn(*args))``, ``("timeout", None)`` or ``("died", None)``; WorkerError if fn raised.

        ``timeout_s`` bounds the time on workers, not the wait for one. A worker that dies
        under a request (killed from outside) is replaced and the request sent again, within
        what is left of ``timeout_s``, to at most ``size + 1`` workers.
        """
        spent, outcome = 0.0, "timeout"
        for _attempt in range(self.size + 1):
            left = timeout_s - spent
            if left <= 0:
                return "timeout", None
            worker = self._acquire()
            start = time.monotonic()
            try:
                worker.conn.send((fn, args, left + HARD_LIMIT_MARGIN_S))
                if worker.conn.poll(left):
                    status, result = worker.conn.recv()
                    self._release(worker)
                    if status == "raised":
                        raise WorkerError(f"{getattr(fn, '__name__', fn)} raised {result}")
                    return "ok", result
                outcome = "timeout"
            except (EOFError, OSError):  # killed from outside, crashed
                outcome = "died"
            spent += time.monotonic() - start
            self._discard(worker)
            if outcome == "timeout":
                break
        return outcome, None

    def warm_up(self) -> None:
        """Block until every worker is up (or raise why they cannot start); idle workers that
        died (killed from outside) are replaced first."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with self._cond:
            for worker in [w for w in self._idle if w.conn.poll(0)]:  # readable when idle: EOF
                self._idle.remove(worker)
                self._drop(worker)
            failures = self._request_workers()
            while self._live < self.size:
                self._wait(failures, deadline)

    def worker_pids(self) -> list[int]:
        with self._cond:
            return [w.pid for w in self._idle]

    def zygote_pid(self) -> int | None:
        """The zygote's pid (its reaped children are the workers that ended), None before start."""
        zygote = self._zygote
        return None if zygote is None else zygote.pid

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in idle:
            _kill(worker)
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait(timeout=5)
            self._zygote_conn.close()

    def _acquire(self) -> _Worker:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with self._cond:
            failures = self._request_workers()
            while True:
                while self._idle:
                    worker = self._idle.pop()
                    if not worker.conn.poll(0):  # an idle worker that can be read is dead (EOF)
                        return worker
                    self._drop(worker)
                self._wait(failures, deadline)

    def _wait(self, failures: int, deadline: float) -> None:
        """Wait for a change; raise if the spawner failed since ``failures`` or time ran out."""
        self._cond.wait(timeout=max(deadline - time.monotonic(), 0.0))
        if self._failure[0] != failures:
            raise RuntimeError(f"the worker processes could not start: {self._failure[1]}")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no worker process became free within {STARTUP_TIMEOUT_S:.0f} s")

    def _request_workers(self) -> int:
        """(Under the lock) ask the spawner for what the pool lacks; the failure count now."""
        if self._closed:
            raise RuntimeError("the worker pool is closed (the process is exiting)")
        self._wanted = self.size - self._live
        if self._wanted and self._spawner is None:
            self._spawner = threading.Thread(
                target=self._spawn_loop, name="worker-pool", daemon=True
            )
            self._spawner.start()
        self._cond.notify_all()
        return self._failure[0]

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            self._idle.append(worker)
            self._cond.notify_all()

    def _discard(self, worker: _Worker) -> None:
        _kill(worker)
        with self._cond:
            self._live -= 1
            self._wanted += 1
            self._cond.notify_all()

    def _drop(self, worker: _Worker) -> None:
        """(Under the lock) forget a dead idle worker and ask for a replacement."""
        _kill(worker)
        self._live -= 1
        self._wanted += 1
        self._cond.notify_all()

    # -- the spawner thread

    def _spawn_loop(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                worker = self._fork_worker()
            except Exception as exc:  # raised in every waiting caller (see _wait)
                log.error("worker processes could not start: %s", exc)
                with self._cond:
                    self._failure = (self._failure[0] + 1, str(exc))
                    self._wanted = 0
                    self._cond.notify_all()
                continue
            with self._cond:
                if self._closed:
                    _kill(worker)
                    return
                self._wanted = max(self._wanted - 1, 0)
                self._live += 1
                self._idle.append(worker)
                self._cond.notify_all()

    def _fork_worker(self) -> _Worker:
        if self._zygote is None or self._zygote.poll() is not None:
            self._start_zygote()
        ours, theirs = multiprocessing.Pipe()  # a socket pair: its fd travels to the zygote
        try:
            reduction.send_handle(self._zygote_conn, theirs.fileno(), self._zygote.pid)
            if not self._zygote_conn.poll(STARTUP_TIMEOUT_S):
                raise RuntimeError("the zygote did not answer a fork request")
            pid = self._zygote_conn.recv()
        except (EOFError, OSError) as exc:
            self._stop_zygote()
            raise RuntimeError(f"the zygote died ({exc!r})") from exc
        finally:
            theirs.close()
        pidfd = _open_pidfd(pid)
        worker = _Worker(pid, ours, pidfd)
        if not (ours.poll(STARTUP_TIMEOUT_S) and ours.recv() == _READY):
            _kill(worker)
            raise RuntimeError("a forked worker did not start")
        self.stats["worker_forks"] += 1
        return worker

    def _start_zygote(self) -> None:
        self._stop_zygote()
        parent_conn, child_conn = multiprocessing.Pipe()
        child_fd, spec = child_conn.fileno(), self.warm_up_spec
        self._zygote = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE_COMMAND, json.dumps(sys.path), str(child_fd), spec],
            pass_fds=(child_fd,),
            stdin=subprocess.DEVNULL,
        )
        child_conn.close()
        self._zygote_conn = parent_conn
        self.stats["interpreter_starts"] += 1
        try:
            ready = parent_conn.poll(STARTUP_TIMEOUT_S) and parent_conn.recv() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._stop_zygote()
            raise RuntimeError(
                f"the zygote did not start within {STARTUP_TIMEOUT_S:.0f} s "
                f"(running {self.warm_up_spec}: see its traceback above)"
            )

    def _stop_zygote(self) -> None:
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait(timeout=5)
            self._zygote_conn.close()
        self._zygote, self._zygote_conn = None, None


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` where the OS has them (Linux >= 5.3), else None (plain pids)."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError as exc:  # an older kernel: kill by pid
        log.debug("no pidfd for worker %d (%s); using its pid", pid, exc)
        return None


def _kill(worker: _Worker) -> None:
    """SIGKILL a worker (the zygote reaps it) and close our ends."""
    try:
        if worker.pidfd is not None:
            signal.pidfd_send_signal(worker.pidfd, signal.SIGKILL)
        else:
            os.kill(worker.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already exited: nothing to kill
        pass
    if worker.pidfd is not None:
        os.close(worker.pidfd)
    worker.conn.close()
