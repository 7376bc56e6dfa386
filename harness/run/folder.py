"""A run folder is one run's: its name is one folder under --out, one command holds it at a time, and
a resumed run continues the run that is there, not another.

- :func:`check_run_id`: ``--run-id`` is one folder name (no separator, no ``..``, no leading dot).
- :class:`RunLock`: an exclusive ``fcntl.flock`` on ``<run folder>/.lock`` for the whole command; a second
  command on the same run id is refused, naming the holder's pid. The other nodes or SLURM tasks of one
  multi-process run share its folder and lock ``.lock-node<N>`` / ``.lock-task<N>`` each, so two of the
  same part still exclude each other. The kernel releases the lock of a
  process that died, so a stale lock file is simply taken over.
- :func:`resume_mismatches`: what differs between the finished part of a run and the command resuming it
  (the config, the data, the device, the threads), each named by its key.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from ..config.schema import flatten, with_defaults
from .launch import LaunchError

_RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
LOCK_NAME = ".lock"
# Keys that may change when a run is resumed: they change neither the work nor its measurement.
RESUMABLE_KEYS = ("benchmark.timeout_s", "benchmark.allow_divergent")


def check_run_id(run_id: str | None) -> str | None:
    """``run_id`` when it names one folder; LaunchError otherwise (exit 2, nothing written)."""
    if run_id is None or _RUN_ID.fullmatch(run_id):
        return run_id
    raise LaunchError(
        f"--run-id {run_id!r}: expected one folder name under --out (letters, digits, '_', '-' "
        "and '.', not starting with '.'; no '/' or '..')"
    )


class RunLock:
    """Held while a command writes under ``folder``; re-entrant within one process (the rounds of
    ``--repeats`` each take it again)."""

    _held: dict[Path, list] = {}  # lock file -> [fd, depth]
    created = False

    def __init__(self, folder: str | os.PathLike, part: str = ""):
        self.folder, self.part = Path(folder).resolve(), part
        self.path = self.folder / (f"{LOCK_NAME}-{part}" if part else LOCK_NAME)

    def __enter__(self) -> RunLock:
        held = self._held.get(self.path)
        if held:
            held[1] += 1
            return self
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise LaunchError(
                    f"{self.folder}: run id in use by another mrcnn-bench command (pid {holder}"
                    f"{', as ' + self.part if self.part else ''}); "
                    "wait for it to finish, or choose another --run-id"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._held[self.path] = [fd, 1]
        return self

    def __exit__(self, *exc) -> None:
        held = self._held[self.path]
        held[1] -= 1
        if held[1]:
            return
        del self._held[self.path]
        self.path.unlink(missing_ok=True)  # while still held: a waiting opener re-checks the inode
        os.close(held[0])
        if self.created:  # made for this command and nothing written in it (bad input): not left behind
            try:
                self.folder.rmdir()
            except OSError:
                pass


def resume_mismatches(kept: list[dict], config: dict, data: dict, machine: dict) -> list[str]:
    """``key: finished value -> this command's value`` for every setting in which the command resuming a
    run differs from a finished implementation's record: a config key (those of ``RESUMABLE_KEYS``
    aside), the data set's counts (``data.*``), and ``machine``'s facts (``environment.*``: the CPU, the
    GPUs, the threads per process)."""
    now = {**flatten({"config": config, "data": data}), **{f"environment.{k}": v for k, v in machine.items()}}
    problems: dict[str, str] = {}
    for record in kept:
        env = record.get("environment") or {}
        then = {
            **flatten(
                {"config": with_defaults(record.get("config") or {}), "data": record.get("data") or {}}
            ),
            **{f"environment.{k}": env.get(k) for k in machine},
        }
        for key in sorted(set(now) | set(then)):
            if now.get(key) != then.get(key) and key.removeprefix("config.") not in RESUMABLE_KEYS:
                problems.setdefault(
                    key, f"{key.removeprefix('config.')}: {then.get(key)!r} -> {now.get(key)!r}"
                )
    return list(problems.values())
