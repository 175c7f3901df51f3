"""Per-entry locks (:func:`~sst_merge_plugin.atomic.make_once`) between processes.

A second process waits while the first makes an entry and then reuses it; a holder killed with
SIGKILL (its lock file left behind) blocks nobody, neither a process already waiting nor a
later one. "Waiting" is read from ``/proc/locks`` (a blocked ``flock`` request), not from the
clock.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest

from sst_merge_plugin.atomic import entry_lock, make_once

pytestmark = pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux /proc/locks")

SPAWN = multiprocessing.get_context("spawn")
#: generous bound on any wait (a hung test fails instead of blocking forever)
PATIENCE_S = 300.0


@pytest.fixture
def start_process() -> Iterator[Callable[..., BaseProcess]]:
    """``start_process(target, *args, context=SPAWN)`` starts ``target(*args)`` in a child
    process; children still alive at teardown (a failed test) are killed, not waited for."""
    started: list[BaseProcess] = []

    def start(target: Callable[..., None], *args: Any, context: BaseContext = SPAWN) -> BaseProcess:
        process = context.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            process.kill()
        process.join()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until true; fail after :data:`PATIENCE_S`."""
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def blocked_on_a_lock(pid: int) -> bool:
    """Whether process ``pid`` waits for a ``flock`` (a ``->`` line of ``/proc/locks``)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1:3] == ["->", "FLOCK"] and fields[5] == str(pid):
            return True
    return False


def _make_slowly(entry: str, started: str, go: str) -> None:
    """Child: make ``entry`` (content ``child``), pausing inside ``make`` until ``go`` exists."""

    def make(path: Path) -> None:
        Path(started).touch()
        while not Path(go).exists():
            time.sleep(0.02)
        path.write_text("child")

    make_once(entry, make)


def _hold_forever(entry: str, started: str) -> None:
    """Child: hold the lock of ``entry`` until killed."""
    with entry_lock(entry):
        Path(started).touch()
        while True:
            time.sleep(1)


class Waiter(threading.Thread):
    """``make_once(entry)`` in a thread of this process; ``made`` is its return value."""

    def __init__(self, entry: Path) -> None:
        super().__init__(daemon=True)
        self.entry = entry
        self.made: bool | None = None

    def run(self) -> None:
        self.made = make_once(self.entry, lambda path: path.write_text("waiter"))


def test_a_second_process_waits_and_reuses_the_entry(
    tmp_path: Path, start_process: Callable[..., BaseProcess]
) -> None:
    entry, started, go = tmp_path / "cache" / "entry", tmp_path / "started", tmp_path / "go"
    holder = start_process(_make_slowly, str(entry), str(started), str(go))
    wait_for(started.exists, "the holder to start making the entry")
    waiter = Waiter(entry)
    waiter.start()
    wait_for(lambda: blocked_on_a_lock(os.getpid()) or not waiter.is_alive(), "the waiter")
    assert waiter.is_alive() and not entry.exists()  # waiting, not making it too
    go.touch()
    holder.join(PATIENCE_S)
    waiter.join(PATIENCE_S)
    assert holder.exitcode == 0
    assert waiter.made is False and entry.read_text() == "child"
    assert sorted(path.name for path in entry.parent.iterdir()) == ["entry"]  # lock removed


def test_a_killed_holder_blocks_nobody(
    tmp_path: Path, start_process: Callable[..., BaseProcess]
) -> None:
    entry, started = tmp_path / "entry", tmp_path / "started"
    lock = tmp_path / ".entry.lock"

    # a process already waiting gets the lock when the holder is killed
    holder = start_process(_hold_forever, str(entry), str(started))
    wait_for(started.exists, "the holder to take the lock")
    waiter = Waiter(entry)
    waiter.start()
    wait_for(lambda: blocked_on_a_lock(os.getpid()), "the waiter to block")
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(PATIENCE_S)
    waiter.join(PATIENCE_S)
    assert holder.exitcode == -signal.SIGKILL
    assert waiter.made is True and entry.read_text() == "waiter"
    assert not lock.exists()

    # a stale lock file (its holder killed, nobody waiting) does not block a later process
    entry.unlink()
    started.unlink()
    holder = start_process(_hold_forever, str(entry), str(started))
    wait_for(started.exists, "the holder to take the lock")
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(PATIENCE_S)
    assert lock.exists()  # left behind by the killed holder
    assert make_once(entry, lambda path: path.write_text("later")) is True
    assert entry.read_text() == "later" and not lock.exists()
