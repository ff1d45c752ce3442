"""One service per data folder: an exclusive lock on `<data_dir>/service.lock`, taken before any job file is
read or written.

Two services on one folder would both run its queue and rewrite each other's job states (the second marks
the first one's running job interrupted, and a result reported as succeeded can be gone after a restart).
The lock is the operating system's file lock (flock on POSIX, msvcrt on Windows), so it ends with the
process however the process ends (kill -9 included): a lock file left behind never blocks a restart. The
file's content, the holder's process id and URL, only serves to name the holder in the second one's error.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from backend.errors import DreamsmithError
from backend.fileio import try_lock

LOCK_NAME = "service.lock"
MAX_HOLDER_BYTES = 4096


class DataDirBusy(DreamsmithError):
    """Another process holds the data folder's lock; the message names the folder and that process."""

    def __init__(self, data_dir: Path, holder: dict[str, Any]) -> None:
        pid = holder.get("pid")
        who = f"process {pid}" if isinstance(pid, int) else "another process"
        if isinstance(holder.get("url"), str):
            who += f", {holder['url']}"
        super().__init__(
            f"the data folder {data_dir} is in use by another Dreamsmith backend ({who}); stop that one, "
            "or pass another --data-dir"
        )
        self.holder = holder


class DataDirLock:
    """The exclusive lock of one data folder, held from `acquire` until `release` or the process's end."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None
        self._holder: dict[str, Any] = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DataDirLock:
        """Take the lock (creating the folder) or raise DataDirBusy; an unwritable folder raises OSError."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirBusy(self.data_dir, holder)
        self._fd = fd
        self.describe(pid=os.getpid(), since=time.time())
        return self

    def describe(self, **holder: Any) -> None:
        """Record who holds the lock (merged into what is there), e.g. the URL once the port is bound."""
        if self._fd is None:
            return
        self._holder.update(holder)
        data = json.dumps(self._holder).encode("utf-8")
        # Best effort: the lock is what protects the folder, the text only names its holder.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, data)

    def release(self) -> None:
        """Give the folder up. The file stays: removing it could let two processes lock different files."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the lock

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, MAX_HOLDER_BYTES).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
