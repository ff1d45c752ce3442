"""Generation without a UI: in `bpy.app.background` no timers fire, so the same run is polled in a loop
with a progress line printed to the terminal. Used by the Generate operator's `execute` and by
`scripts/blender_generate.py`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import bpy

from . import session
from .client import BackendError
from .generation import new_run
from .runner import GenerationRun, run_blocking

# In logs (not a terminal) a line is printed when the phase or step changes, at most every
# LOG_INTERVAL_S, and otherwise every LOG_QUIET_S, so that an ETA ticking down does not flood them.
LOG_INTERVAL_S = 2.0
LOG_QUIET_S = 30.0


class ProgressPrinter:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_key: tuple[object, ...] = ()
        self._last_time = 0.0

    def __call__(self, run: GenerationRun) -> None:
        if run.finished:
            text = f"[dreamsmith] {run.outcome}" + (f": {run.error}" if run.error else "")
        else:
            text = f"[dreamsmith] {run.describe()}"
        st = run.status
        key = (run.outcome, st.state if st else None, st.phase if st else None, st.step if st else None)
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if run.finished else ""))
        else:
            since = now - self._last_time
            changed = key != self._last_key
            if not (run.finished or (changed and since >= LOG_INTERVAL_S) or since >= LOG_QUIET_S):
                return
            self.stream.write(text + "\n")
        self._last_key, self._last_time = key, now
        self.stream.flush()


def run_with_progress(run: GenerationRun, timeout_s: float | None = None) -> GenerationRun:
    """Poll `run` to the end, printing progress; the job is cancelled on the backend past `timeout_s`."""
    session.STATE.run = run
    printer = ProgressPrinter()
    try:
        return run_blocking(run, timeout_s=timeout_s, on_progress=printer)
    except KeyboardInterrupt:
        run.request_cancel()
        run.tick()
        raise


def generate(context: bpy.types.Context | None = None, timeout_s: float | None = None) -> bpy.types.Object:
    """Generate from the scene's Dreamsmith settings and return the imported object.

    Raises BackendError with a plain-words message when the backend is down, refuses the settings,
    the job fails, is cancelled, or does not finish within `timeout_s`.
    """
    context = context or bpy.context
    run = new_run(context, fetch_previews=False)
    run.start()
    run_with_progress(run, timeout_s)
    if run.outcome != "succeeded":
        raise BackendError(run.error or f"The generation ended as {run.outcome}.")
    obj = run.imported
    assert isinstance(obj, bpy.types.Object)
    return obj
