"""The output folder of a run: ``records.jsonl`` (append-only) and ``run.json``.

``records.jsonl`` gets one :class:`~degen.records.Completion` per line, written and
flushed as each request finishes, so a crash (even ``kill -9``) loses at most the
requests in flight. A line cut short by a crash is dropped when the folder is
reopened with ``resume=True``; every complete line is kept and never duplicated. A
request withdrawn before it ended (finish_reason ``"cancelled"``) keeps its line,
and a resumed run sends it again; readers take :func:`settled` records.

``run.json`` holds the plan's fingerprint, the engine description, versions and
start/end times; it is rewritten atomically (write then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from degen.errors import InputFileError, OutputDirError
from degen.records import Completion

RECORDS = "records.jsonl"
RUN_JSON = "run.json"


def write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_out_dir(path: Path, flag: str = "--out") -> Path:
    """``path`` if it can be the output folder: a folder, or a path that can be made one
    (no file in the way, the nearest existing folder writable). Nothing is created, so a
    command checks its output here before any work and writes nothing on a bad one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{flag} {path} is a file; pass a folder")
    _check_can_make(path, path, flag)
    return path


def check_out_file(path: Path, flag: str = "--out") -> Path:
    """``path`` if it can be the output file (its folder is made when written)."""
    path = Path(path)
    if path.is_dir():
        raise OutputDirError(f"{flag} {path} is a folder; pass a file name")
    _check_can_make(path.parent, path, flag)
    return path


def _check_can_make(folder: Path, out: Path, flag: str) -> None:
    """``folder`` exists or can be made, and can be written in."""
    up = folder
    while not up.exists() and up != up.parent:  # under a file, exists() is False too
        up = up.parent
    if not up.is_dir():
        raise OutputDirError(f"{flag} {out}: {up} is a file, not a folder; pass another "
                             f"{flag}")
    if not os.access(up, os.W_OK | os.X_OK):
        raise OutputDirError(f"{flag} {out}: cannot write in {up} (permission denied); "
                             f"pass an {flag} you can write to")


def iter_records(path: Path, *, allow_torn_tail: bool = False) -> Iterator[Completion]:
    """Read a records file; a malformed line is an error naming it. With
    ``allow_torn_tail`` a last line without its newline (a write cut by a crash) is
    skipped instead."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        last = n == len(lines)
        try:
            yield Completion.from_json(raw.decode("utf-8"))
        except Exception as e:
            if last and torn and allow_torn_tail:
                return
            raise InputFileError(f"{path}:{n}: not a degen record ({e})") from None


def settled(records: Iterable[Completion]) -> list[Completion]:
    """One record per request: the first that is not cancelled (a cancelled request
    is sent again on resume, so its later record is the one that counts). Requests
    that were only ever cancelled are left out."""
    out: dict[str, Completion] = {}
    for c in records:
        if not c.is_cancelled:
            out.setdefault(c.request_id, c)
    return list(out.values())


class AppendLog:
    """An append-only JSONL file of records: a line cut short by a crash is dropped
    when it is opened, every complete line is kept (:attr:`records`), and each
    :meth:`append` is written and flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: list[Completion] = []
        if self.path.exists():
            self.records = list(iter_records(self.path, allow_torn_tail=True))
            _truncate_torn_tail(self.path)
        self._lock = threading.Lock()
        self._fh: Any = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def append(self, c: Completion) -> None:
        line = c.to_json() + "\n"
        with self._lock:
            if self._fh is None:  # closed: a request cancelled by Ctrl-C ending late
                return
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _truncate_torn_tail(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)


class RunDir:
    """An output folder. Use :meth:`create` for a new run, :meth:`resume` to continue."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records_path = self.path / RECORDS
        self.run_json_path = self.path / RUN_JSON
        self._log: AppendLog | None = None

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(cls, path: Path, meta: dict[str, Any]) -> RunDir:
        d = cls(path)
        if d.records_path.exists() or d.run_json_path.exists():
            raise OutputDirError(
                f"{d.path} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        check_out_dir(d.path)
        d.path.mkdir(parents=True, exist_ok=True)
        d.write_meta(meta)
        d._log = AppendLog(d.records_path)
        return d

    @classmethod
    def resume(cls, path: Path, fingerprint: dict[str, Any]) -> tuple[RunDir, list[Completion]]:
        """Reopen ``path`` for appending; return the completions already there."""
        d = cls(path)
        if not d.run_json_path.is_file():
            raise OutputDirError(f"{d.path} has no {RUN_JSON} to resume; run without --resume")
        meta = d.read_meta()
        old = meta.get("plan")
        if old != fingerprint:
            diff = sorted(k for k in set(old or {}) | set(fingerprint)
                          if (old or {}).get(k) != fingerprint.get(k))
            raise OutputDirError(
                f"{d.path} was started with different settings ({', '.join(diff)} differ); "
                "resume with the same flags or choose another --out"
            )
        d._log = AppendLog(d.records_path)
        return d, settled(d._log.records)

    # ---------------------------------------------------------------- writing
    def append(self, c: Completion) -> None:
        if self._log is not None:
            self._log.append(c)

    def read_meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_json_path.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise OutputDirError(f"{self.run_json_path} is unreadable ({e})") from None

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_json_atomic(self.run_json_path, meta)

    def update_meta(self, **changes: Any) -> dict[str, Any]:
        meta = self.read_meta()
        meta.update(changes)
        self.write_meta(meta)
        return meta

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
