"""Atomic file writes: a reader never sees a half-written request, state, preview or mesh.

Also `try_lock`, the exclusive lock a process holds on a folder it owns (the service's data folder, a
batch's output folder), and the checks made before a long run writes its results: that the output folder
takes a file and has room for one result (`check_output_folder`), so a full or read-only disk is reported
before the hour of optimization, not after.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from backend.errors import OutputError

PROBE_NAME = ".dreamsmith-write-test"
MIB = 1 << 20


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write to a temporary file in the same folder, flush it to disk, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path | str, obj: Any) -> Path:
    return write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))


def save_npz_atomic(path: Path | str, **arrays: NDArray[Any]) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_bytes_atomic(path, buf.getvalue())


def remove_orphan_temporaries(folder: Path | str) -> list[Path]:
    """Delete the temporary files `write_bytes_atomic` leaves behind when its process is killed mid-write.

    Only for a folder no other process writes into (the service holds its data folder's lock)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            continue
        removed.append(tmp)
    return removed


def result_bytes_bound(target_faces: int, texture_size: int, uv: bool) -> int:
    """An upper bound of one result's files: mesh.npz and mesh.glb (about 80 bytes per face: indices,
    positions, normals, colours or uvs, with vertices split at seams), the texture twice (texture.png and
    inside the GLB, at most 3 bytes a texel) and a preview."""
    texture = 2 * 3 * texture_size * texture_size if uv else 0
    return 80 * target_faces + texture + MIB


def check_output_folder(folder: Path | str, need_bytes: int = 0) -> Path:
    """Create `folder` if needed and check that a file can be written there and that `need_bytes` are free;
    raises OutputError naming the folder and the reason."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "a file is in the way of the output folder; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = write_bytes_atomic(folder / PROBE_NAME, b"dreamsmith")
        probe.unlink()
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise OutputError.from_os_error(folder, exc) from exc
    if free < need_bytes:
        raise OutputError(
            folder,
            f"only {free / MIB:.1f} MiB free and a result needs up to {need_bytes / MIB:.1f} MiB; "
            "free some disk space or choose another output folder",
        )
    return folder


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on the open file `fd` without waiting: True when taken, False when another
    process holds it. The operating system drops it when the process ends, however it ends."""
    if sys.platform == "win32":
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
