"""`degen scan --jobs N`: the same verdicts in the same order as in one process, a
bounded read-ahead and flat memory, bad lines still named with nothing printed, and no
worker left behind after an error or Ctrl-C."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid
from contextlib import closing
from pathlib import Path

import pytest

from degen.detect.inputs import open_completions
from degen.detect.scan import KindTally, iter_chunks, ordered_map, resolve_jobs, scan_file
from degen.detect.verdict import kind_rates
from degen.errors import DegenError, InputFileError, UsageError
from tests.detect.test_scan import DEGEN, FINE, GLUED, LOOP

TEXTS = [LOOP, GLUED, FINE, "Paris.", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"]


def rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "text": TEXTS[i % len(TEXTS)],
             "finish_reason": "length" if i % 7 == 0 else "stop"} for i in range(n)]


def write(path: Path, items: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in items))
    return path


def degen(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DEGEN, *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_workers_give_the_same_verdicts_in_input_order(tmp_path: Path) -> None:
    f = write(tmp_path / "in.jsonl", rows(60))
    alone = list(scan_file(f))
    with closing(scan_file(f, jobs=2, chunk_lines=5)) as verdicts:
        pooled = list(verdicts)
    assert pooled == alone
    assert [v["id"] for v in pooled] == [f"r{i}" for i in range(60)]
    assert {k for v in pooled for k in v["kinds"]} >= {"loop", "capped", "spacing"}


@pytest.mark.parametrize("fmt", ["jsonl", "table"])
def test_cli_output_is_the_same_with_any_jobs(tmp_path: Path, fmt: str) -> None:
    f = write(tmp_path / "in.jsonl", [*rows(40), "", *rows(3)])  # a blank line is skipped
    runs = [degen("scan", str(f), "--format", fmt, "--jobs", j) for j in ("1", "2", "0")]
    for r in runs:
        assert r.returncode == 0 and r.stderr == "", r.stderr  # no bar when not a terminal
        assert r.stdout == runs[0].stdout
    if fmt == "table":
        assert "43 completions" in runs[0].stdout
    else:
        assert len(runs[0].stdout.splitlines()) == 43


def test_ordered_map_reads_a_bounded_window_ahead() -> None:
    pulled = []

    def tasks():  # endless: an eager reader (Pool.imap) would never return
        for i in itertools.count():
            pulled.append(i)
            yield (i, 0.02 if i % 3 == 0 else 0.0)

    with closing(ordered_map(_slow_echo, tasks(), 2, window=4)) as results:
        first = list(itertools.islice(results, 20))
    assert first == list(range(20))  # in order, though every third task is slower
    assert len(pulled) <= 20 + 4


def test_a_dead_worker_is_an_error_not_a_hang() -> None:
    with pytest.raises(DegenError, match="a worker process died"), \
            closing(ordered_map(os._exit, [(3,)], 1)) as results:
        next(results)


def _slow_echo(i: int, delay: float) -> int:
    time.sleep(delay)
    return i


def test_chunks_are_bounded_in_lines_and_characters() -> None:
    items = [(n, "x" * size) for n, size in enumerate([10, 10, 10, 50, 10, 10], 1)]
    chunks = list(iter_chunks(items, max_items=3, max_chars=40))
    assert [[n for n, _ in c] for c in chunks] == [[1, 2, 3], [4], [5, 6]]
    lazy = iter_chunks(((n, "x") for n in itertools.count()), max_items=2)
    assert next(lazy) == [(0, "x"), (1, "x")]
    with pytest.raises(ValueError, match=">= 1"):
        next(iter_chunks(items, max_items=0))


def test_parent_memory_stays_flat_on_a_bigger_file(tmp_path: Path) -> None:
    def peak(n: int, jobs: int) -> int:
        f = write(tmp_path / f"in{n}.jsonl", [{"text": f"Answer number {i}."}
                                              for i in range(n)])
        tally = KindTally(("runaway",))
        tracemalloc.start()
        try:
            with closing(scan_file(f, ("runaway",), jobs=jobs)) as verdicts:
                for v in verdicts:
                    tally.add(v)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert tally.n == n

    for jobs in (1, 2):
        small, big = peak(1_000, jobs), peak(10_000, jobs)
        # keeping 10,000 verdicts would take megabytes; a bounded window does not grow
        assert big < small * 1.5 + 200_000, (jobs, small, big)


def test_kind_tally_gives_kind_rates(tmp_path: Path) -> None:
    verdicts = list(scan_file(write(tmp_path / "in.jsonl", rows(30))))
    tally = KindTally()
    for v in verdicts:
        tally.add(v)
    assert tally.rates() == kind_rates(verdicts)
    assert KindTally().rates() == kind_rates([])


def test_resolve_jobs() -> None:
    assert resolve_jobs(3) == 3 and resolve_jobs(0) >= 1
    with pytest.raises(UsageError, match="--jobs"):
        resolve_jobs(-1)


def test_a_bad_line_raises_from_a_worker_naming_it(tmp_path: Path) -> None:
    f = write(tmp_path / "in.jsonl", [*rows(100), "{oops", *rows(5)])
    with pytest.raises(InputFileError, match=r"in\.jsonl:101: not valid JSON"), \
            closing(scan_file(open_completions(f), jobs=2, chunk_lines=8)) as verdicts:
        for _ in verdicts:
            pass


@pytest.mark.parametrize("fmt", ["jsonl", "table"])
def test_a_late_bad_line_prints_nothing_with_jobs(tmp_path: Path, fmt: str) -> None:
    f = write(tmp_path / "in.jsonl", [*rows(150), {"id": 1}, *rows(5)])
    r = degen("scan", str(f), "--format", fmt, "--jobs", "2")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {tmp_path}/in.jsonl:151: not a degen record")


def test_bad_jobs_is_a_usage_error(tmp_path: Path) -> None:
    r = degen("scan", str(write(tmp_path / "in.jsonl", rows(2))), "--jobs", "-2")
    assert r.returncode == 2 and "--jobs must be 0 (one per CPU core) or more" in r.stderr


# --- no process left behind ----------------------------------------------------------

needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(),
                                reason="finds processes by their environment in /proc")


def marked(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker`` (ours and children)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
            state = next(ln for ln in (d / "status").read_text().splitlines()
                         if ln.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if marker.encode() in env and "zombie" not in state:
            pids.append(int(d.name))
    return pids


def gone(marker: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while marked(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def marked_env() -> tuple[str, dict]:
    marker = f"DEGEN_TEST_{uuid.uuid4().hex}"
    return marker, {**os.environ, "DEGEN_TEST_MARKER": marker}


@needs_proc
def test_no_worker_outlives_an_error(tmp_path: Path) -> None:
    marker, env = marked_env()
    f = write(tmp_path / "in.jsonl", [*rows(150), "[1, 2]"])
    r = degen("scan", str(f), "--jobs", "2", env=env)
    assert r.returncode == 2 and "in.jsonl:151: expected a JSON object" in r.stderr
    assert gone(marker), marked(marker)


@needs_proc
def test_ctrl_c_stops_parent_and_workers(tmp_path: Path) -> None:
    marker, env = marked_env()
    f = write(tmp_path / "in.jsonl", rows(200_000))  # long enough to still run when stopped
    p = subprocess.Popen([DEGEN, "scan", str(f), "--jobs", "2"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(marked(marker)) < 4 and time.monotonic() < deadline:  # parent, server,
            time.sleep(0.1)                                              # two workers
        assert len(marked(marker)) >= 4, "the workers never started"
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and out == "", err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err  # not workers'
    assert gone(marker), marked(marker)



@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_a_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    import pty
    import threading

    f = write(tmp_path / "in.jsonl", rows(30))
    leader, follower = pty.openpty()
    shown = bytearray()

    def drain() -> None:  # read the terminal as it fills, so the bar never blocks
        with contextlib.suppress(OSError):  # EIO once the other end is closed
            while chunk := os.read(leader, 65536):
                shown.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        r = subprocess.run([DEGEN, "scan", str(f), "--jobs", "2"], stdout=subprocess.PIPE,
                           stderr=follower, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "100"})
    finally:
        os.close(follower)
        reader.join(timeout=10)
        os.close(leader)
    assert r.returncode == 0 and "30 completions" in r.stdout
    assert b"30/30" in shown and b"degenerate" in shown  # the bar, on stderr only
    assert "degenerate" not in r.stdout


def test_a_ctrl_c_while_the_pool_starts_waits_until_it_has_started() -> None:
    from degen.detect.scan import _ctrl_c_deferred

    reached = []
    with pytest.raises(KeyboardInterrupt), _ctrl_c_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler has run by now; it only noted the signal
        reached.append("end of block")
    assert reached == ["end of block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
