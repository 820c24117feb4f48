"""One release at a time per pipeline: `run` and `rollback` hold an exclusive lock on the run
directory (runs/<name>/) from start to end.

The lock is the kernel's (fcntl.flock) on a file in the run directory: it belongs to the open
file, so it ends with the process however the process ends (SIGKILL included), and a killed run
never leaves a stale lock behind. The file stays in place (removing it would let two processes
lock two different files of one name); the holder writes its pid, command and start time into it,
for the line a refused process prints. Only the stdlib (and the exit codes) is imported here: the CLI takes the lock
before TensorFlow loads, so a refused run answers within a second.
"""

import contextlib
import datetime
import fcntl
import json
import os
import time
from typing import Callable, Iterator, Optional

from components.shared.exit_codes import EXIT_LOCKED  # noqa: F401 (the CLI's code for a held lock)
LOCK_FILE = 'run.lock'


class Locked(Exception):
    """Another process holds the lock; the message names it (pid, command, since when)."""

    def __init__(self, run_dir: str, holder: dict):
        self.holder = holder
        super().__init__(f'{run_dir} is in use by {describe(holder)}')


def describe(holder: dict) -> str:
    """`pid 123 (python -m pipeline run ...), since 2025-01-01T12:00:00+00:00`, from what the
    holder wrote; a holder that has not written yet (it took the lock this instant) is unnamed."""
    if not holder.get('pid'):
        return 'another process (it has just started)'
    command = f" ({holder['command']})" if holder.get('command') else ''
    return f"pid {holder['pid']}{command}, since {holder.get('since', 'an unknown time')}"


def holder(run_dir: str) -> dict:
    """What the process holding (or that last held) the lock wrote: pid, command, since; {} if
    nothing readable is there."""
    try:
        with open(os.path.join(run_dir, LOCK_FILE)) as f:
            return json.loads(f.read() or '{}')
    except (OSError, ValueError):
        return {}


def _refused_holder(run_dir: str) -> dict:
    # The holder writes its details right after it takes the lock; give it a moment to do so.
    for _ in range(20):
        found = holder(run_dir)
        if found.get('pid'):
            return found
        time.sleep(0.05)
    return {}


@contextlib.contextmanager
def hold(run_dir: str, command: str, wait: bool = False,
         on_wait: Optional[Callable[[dict], None]] = None) -> Iterator[None]:
    """Holds the exclusive lock of `run_dir` for the `with` block. When another process holds it:
    raises Locked, or with `wait` calls `on_wait(holder)` once and blocks until it is free.
    `command` is what a refused process will be told this holder is running."""
    os.makedirs(run_dir, exist_ok=True)
    fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            current = _refused_holder(run_dir)
            if not wait:
                raise Locked(run_dir, current) from None
            if on_wait is not None:
                on_wait(current)
            fcntl.flock(fd, fcntl.LOCK_EX)
        since = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({'pid': os.getpid(), 'command': command, 'since': since}).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock

