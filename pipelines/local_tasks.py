"""kfp.local's tasks at the terminal: a line per task, output in per-task logs, stop at a failure.

Left alone, kfp.local streams each task's whole output to stdout (the executor-input JSON with
the full config, warnings meant for container runs), ends a failure with "Inner task failed" and
keeps running the tasks that do not depend on the failed one. `supervise` hooks two kfp.local
functions for the length of one run:

- `subprocess_task_handler.run_local_subprocess` (starts a task's process): the output goes to
  `<log_dir>/<stage>.log`; progress bars (text ending in a carriage return) are drawn on one
  terminal line; a non-zero exit raises `TaskFailed` at once, carrying the task's own last error
  (class and message, from its log), so no further task starts.
- `task_executor.execute_single_task`: one status line per task (done, cached, failed, seconds)
  and its outputs, kept for the summary at the end of the run.

kfp.local's own log lines and warnings go to `<log_dir>/kfp.log`. With `verbose`, everything is
shown as kfp.local prints it, and still written to the logs. Both hooks are module attributes
of kfp 2.17 (pinned below 2.18 in pyproject.toml); tests/pipelines/test_local_tasks.py runs
them through a real kfp.local pipeline, so a kfp upgrade that moves them fails there.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from coldstart.common.errors import EXIT_BAD_INPUT, EXIT_FAILURE, InputError, one_line

ERROR_LINE = re.compile(
    r"^(?P<cls>[A-Za-z_][\w.]*?(?:Error|Exception|Exit|Interrupt)\w*)(?::\s?(?P<msg>.*))?$"
)


@dataclass
class TaskRecord:
    """One task of a local run as the summary needs it."""

    name: str  # kfp's task name, e.g. "eval-op-2"
    stage: str  # the display name, e.g. "eval"
    status: str  # done | cached | imported | failed
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)
    log: Path | None = None


@dataclass
class LocalRun:
    """What `supervise` saw: the tasks in order, where logs went, kfp's run folder if a task ran."""

    log_dir: Path
    tasks: list[TaskRecord] = field(default_factory=list)
    run_dir: Path | None = None
    pipeline_run_id: str | None = None  # KFP_RUN_ID of the stages (MLflow grouping), if set

    def task(self, stage: str) -> TaskRecord | None:
        return next((t for t in reversed(self.tasks) if t.stage == stage), None)


class TaskFailed(Exception):
    """A local task exited non-zero; the message is the task's own last error."""

    def __init__(self, stage: str, message: str, log: Path, exit_code: int) -> None:
        super().__init__(message)
        self.stage = stage
        self.log = log
        self.exit_code = exit_code


def last_error(log_text: str) -> tuple[str, str] | None:
    """(exception class, message) of the last traceback in a log; None if it holds none.

    The message keeps its continuation lines (a config error lists one field per line).
    """
    lines = log_text.replace("\r", "\n").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call")]
    if not starts:
        return None
    tail = lines[starts[-1] + 1 :]
    for i, line in enumerate(tail):
        found = ERROR_LINE.match(line) if not line.startswith((" ", "\t")) else None
        if found:
            rest = []
            for more in tail[i + 1 :]:
                if not more.strip() or more.startswith("[KFP Executor"):
                    break
                rest.append(more)
            message = "\n".join([found.group("msg") or "", *rest]).strip()
            return found.group("cls"), message
    return None


def is_input_error(class_path: str) -> bool:
    """True if `coldstart.x.y.SomeError` (as a traceback prints it) is an InputError."""
    module, _, name = class_path.rpartition(".")
    if not module.startswith("coldstart."):
        return False
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, InputError)


def failure_from_log(stage: str, log: Path, returncode: int) -> TaskFailed:
    error = last_error(log.read_text(errors="replace")) if log.exists() else None
    if error is None:
        why = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        return TaskFailed(stage, f"the task's process ended ({why}) without a Python error", log, 1)
    cls, message = error
    if is_input_error(cls):
        return TaskFailed(stage, one_line(message), log, EXIT_BAD_INPUT)
    return TaskFailed(stage, f"{one_line(message)} [{cls.rsplit('.', 1)[-1]}]", log, EXIT_FAILURE)


def executor_output_dir(full_command: list[str]) -> Path | None:
    """The task's folder under the pipeline root, from the executor input on its command line."""
    for flag, value in itertools.pairwise(full_command):
        if flag == "--executor_input":
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return Path(json.loads(value)["outputs"]["outputFile"]).parent
    return None


class Supervisor:
    """The state of one supervised run, shared by the two hooks (tasks may run in threads)."""

    def __init__(self, log_dir: Path, verbose: bool, console: TextIO) -> None:
        self.run = LocalRun(log_dir)
        self.verbose = verbose
        self.console = console
        self.live = console.isatty() and not verbose
        self.current = threading.local()
        self.failure: TaskFailed | None = None
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ log files

    def log_path(self, stage: str) -> Path:
        with self.lock:
            self.run.log_dir.mkdir(parents=True, exist_ok=True)
            path, n = self.run.log_dir / f"{stage}.log", 1
            while path.exists():
                n += 1
                path = self.run.log_dir / f"{stage}-{n}.log"
            path.touch()
            return path

    # ------------------------------------------------------------------ hook 1: the task process

    def run_subprocess(
        self, full_command: list[str], env_vars: dict[str, str] | None = None
    ) -> int:
        stage = getattr(self.current, "stage", "task")
        log = self.log_path(stage)
        self.current.log = log
        task_dir = executor_output_dir(full_command)
        if task_dir is not None and self.run.run_dir is None:
            self.run.run_dir = task_dir.parent
        env = {**os.environ, **(env_vars or {})}
        with (
            log.open("w", encoding="utf-8") as out,
            subprocess.Popen(
                full_command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
            ) as process,
        ):
            assert process.stdout is not None
            reader = io.TextIOWrapper(
                process.stdout, encoding="utf-8", errors="replace", newline=""
            )
            for piece in iter(reader.readline, ""):
                out.write(piece)
                out.flush()
                self.show(stage, piece)
            returncode = process.wait()
        if returncode != 0:
            failure = failure_from_log(stage, log, returncode)
            with self.lock:
                self.failure = self.failure or failure
            raise failure
        return 0

    def show(self, stage: str, piece: str) -> None:
        """Verbose: everything; on a terminal: a progress bar's latest state on one line."""
        if self.verbose:
            self.console.write(piece)
        elif self.live and piece.endswith("\r") and piece.strip():
            width = shutil.get_terminal_size().columns - 18
            self.console.write(f"\r\x1b[K  {stage:<14} {piece.strip()[:width]}")
        else:
            return
        self.console.flush()

    # ------------------------------------------------------------------ hook 2: one task

    def execute_task(self, original: Any, **kwargs: Any) -> tuple[dict[str, Any], Any]:
        from kfp.local import status

        spec = kwargs["task_spec"]
        name = kwargs["task_name"]
        stage = spec.task_info.name or name
        self.current.stage, self.current.log = stage, None
        importer = self.is_importer(kwargs)
        start = time.monotonic()
        if self.live and not importer:
            self.console.write(f"  {stage:<14} running\r")
            self.console.flush()
        try:
            outputs, task_status = original(**kwargs)
        except TaskFailed:
            self.record(name, stage, "failed", start, {})
            raise
        ok = task_status == status.Status.SUCCESS
        ran = self.current.log is not None
        state = "imported" if importer else ("done" if ran else "cached") if ok else "failed"
        self.record(name, stage, state, start, outputs if ok else {})
        return outputs, task_status

    @staticmethod
    def is_importer(kwargs: dict[str, Any]) -> bool:
        component = kwargs["components"][kwargs["task_spec"].component_ref.name]
        executor = kwargs["executors"].get(component.executor_label)
        return executor is not None and executor.WhichOneof("spec") == "importer"

    def record(self, name: str, stage: str, state: str, start: float, outputs: dict) -> None:
        seconds = time.monotonic() - start
        task = TaskRecord(name, stage, state, seconds, outputs, self.current.log)
        with self.lock:
            self.run.tasks.append(task)
        if state == "imported" and not self.verbose:
            return
        took = f"{seconds:6.1f}s" if state in ("done", "failed") else ""
        clear = "\r\x1b[K" if self.live else ""
        self.console.write(f"{clear}  {stage:<14} {state:<7} {took}\n")
        self.console.flush()


@contextlib.contextmanager
def supervise(
    log_dir: Path, verbose: bool = False, console: TextIO | None = None
) -> Iterator[LocalRun]:
    """Run kfp.local tasks quietly with per-task logs; raises TaskFailed for the first failure."""
    from kfp.local import subprocess_task_handler
    from kfp.local.orchestrator import task_executor

    sup = Supervisor(log_dir, verbose, console or sys.stderr)
    original_run = subprocess_task_handler.run_local_subprocess
    original_execute = task_executor.execute_single_task

    def execute_single_task(**kwargs: Any) -> tuple[dict[str, Any], Any]:
        return sup.execute_task(original_execute, **kwargs)

    kfp_log = io.StringIO()
    subprocess_task_handler.run_local_subprocess = sup.run_subprocess
    task_executor.execute_single_task = execute_single_task
    try:
        with _kfp_chatter_to(kfp_log, verbose):
            yield sup.run
    except Exception:
        if sup.failure is not None:  # kfp.local turned our TaskFailed into its own RuntimeError
            raise sup.failure from None
        raise
    finally:
        subprocess_task_handler.run_local_subprocess = original_run
        task_executor.execute_single_task = original_execute
        if kfp_log.getvalue():
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / "kfp.log").write_text(kfp_log.getvalue())


@contextlib.contextmanager
def _kfp_chatter_to(buffer: io.StringIO, verbose: bool) -> Iterator[None]:
    """kfp.local's stdout lines, log records and warnings into `buffer`, unless verbose."""

    def keep(message, category, filename, lineno, file=None, line=None):
        buffer.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        if verbose:
            yield
            return
        warnings.showwarning = keep
        root = logging.getLogger()
        handlers = root.handlers[:]
        root.handlers = [logging.StreamHandler(buffer)]
        try:
            with contextlib.redirect_stdout(buffer):
                yield
        finally:
            root.handlers = handlers
