"""Atomic file writes: a reader never sees a half-written request, state, preview or mesh."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


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
