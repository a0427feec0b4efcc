"""The errors users see, and how every command ends when something fails.

Bad input (config, data files, model directories, URIs) raises `InputError`: its message names
the field, file or row and what to do. Every command -- `coldstart ...` and each
`python -m coldstart.<stage>` -- ends a failure the same way (`report_failure`): one line on
stderr naming where it failed and the message, the path of a file holding the full traceback,
exit code 2 for bad input and 1 for anything else. The traceback reaches the terminal only with
`--verbose`: a user fixing a typo in a path does not need 40 lines of stack.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TextIO

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


class InputError(ValueError):
    """Bad input; the message names the field, file or row, and what to do about it."""


def exit_code(exc: BaseException) -> int:
    """2 for bad input, 1 for everything else; an error may carry its own (`exit_code` attribute).

    The attribute lets an error that crossed a process boundary (a failed kfp.local task whose
    log ended in an InputError) keep the class it had on the other side.
    """
    own = getattr(exc, "exit_code", None)
    if isinstance(own, int):
        return own
    return EXIT_BAD_INPUT if isinstance(exc, InputError) else EXIT_FAILURE


def one_line(text: str) -> str:
    """Multi-line messages (a config error lists one field per line) joined into one line."""
    out = ""
    for part in (p.strip() for p in str(text).splitlines()):
        if part:
            out += (" " if out.endswith(":") else "; ") * bool(out) + part
    return out


def failure_log(where: str, exc: BaseException) -> Path:
    """Write the full traceback to a temp file; returns its path (named in the one-line error)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in where)
    with tempfile.NamedTemporaryFile(
        "w", prefix=f"coldstart-{safe}-{stamp}-", suffix=".log", delete=False
    ) as handle:
        handle.write("".join(traceback.format_exception(exc)))
        return Path(handle.name)


def report_failure(
    where: str,
    exc: BaseException,
    verbose: bool = False,
    log: Path | None = None,
    stream: TextIO | None = None,
) -> int:
    """Print the one-line error for `exc` raised in `where`; returns the exit code to use.

    `log` is the file that already holds the full output and traceback (a kfp.local task's log,
    shown as it ran with `--verbose`); without one, the traceback is written to a temp file so
    the line can still point at it, and printed too with `verbose`.
    """
    stream = stream or sys.stderr
    if log is None:
        if verbose:
            traceback.print_exception(exc, file=stream)
        log = failure_log(where, exc)
    plain = isinstance(exc, InputError) or hasattr(exc, "exit_code")  # the message says it all
    kind = "" if plain else f" [{type(exc).__name__}]"
    hint = "" if verbose else "; --verbose shows the traceback"
    print(f"error: {where}: {one_line(str(exc))}{kind} (full log: {log}{hint})", file=stream)
    return exit_code(exc)
