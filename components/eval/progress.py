"""What eval has generated so far, one JSON line per response, so a crashed eval resumes.

Generation is the expensive part of eval; scoring is cheap and (with the extractor's cache)
free to repeat. So each chunk's responses are appended to
`<progress>/<model>/<benchmark>.jsonl` as soon as they exist, and a rerun of the same run
id reads them back in order and generates only what is missing. With an `s3://` output
the files are mirrored there after every chunk (a pod restart keeps them).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from coldstart.common import storage

log = logging.getLogger(__name__)


class ResponseLog:
    """Append-only JSON lines of `{id, response, finish_reason, error, num_tokens}`."""

    def __init__(self, path: Path, remote: str | None = None) -> None:
        self.path = path
        self.remote = remote
        path.parent.mkdir(parents=True, exist_ok=True)
        if remote and not path.exists() and storage.exists(remote):
            storage.download_file(remote, path)

    def read(self) -> Iterator[dict[str, Any]]:
        """The records written so far, in order; a torn last line (a crash mid-write) ends it."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    log.warning(
                        "%s: line %d is incomplete; regenerating from there", self.path, number
                    )
                    self._truncate(number - 1)
                    return
                yield record

    def _truncate(self, keep_lines: int) -> None:
        kept = self.path.read_text(encoding="utf-8").splitlines(keepends=True)[:keep_lines]
        self.path.write_text("".join(kept), encoding="utf-8")

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        with self.path.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            out.flush()
            os.fsync(out.fileno())
        if self.remote:
            storage.upload_file(self.path, self.remote)
