"""One generation as a small state machine: submit, poll, fetch previews and live meshes, download, import.

`tick()` makes at most one short HTTP call, so the modal operator can run one tick per timer event
without freezing Blender, and the headless path runs the same ticks in a loop (`run_blocking`).
The import itself is handed in as a callback: this module knows no bpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import (
    LIVE_NPZ,
    MESH_NPZ,
    PREVIEW_PNG,
    TEXTURE_PNG,
    BackendClient,
    BackendError,
    GenerationRequest,
    JobStatus,
    LiveMesh,
    read_live_npz,
)

# Fetch previews at most this often (each fetch is one tick spent not polling).
PREVIEW_INTERVAL_S = 1.5
# Live meshes (a coarse mesh of the running job, `live_every` steps apart) at most this often.
LIVE_INTERVAL_S = 1.0
# A busy backend may miss a status call's short timeout now and then; a run only fails once the backend
# has not answered for this long (errors the backend itself reports end the run at once).
RETRY_GRACE_S = 20.0


@dataclass
class Downloaded:
    """Where a finished job's files landed on this machine."""

    job_id: str
    mesh_npz: Path
    texture_png: Path | None
    status: JobStatus


ImportResult = Callable[[Downloaded], Any]


class GenerationRun:
    """Drive one job on the backend from submission to an imported object.

    outcome: "running" until finished, then "succeeded", "failed" or "cancelled"; `error` holds the
    plain-words message when it failed. `imported` is what the import callback returned.
    """

    def __init__(
        self,
        client: BackendClient,
        request: GenerationRequest,
        cache_dir: Path,
        import_result: ImportResult,
        *,
        fetch_previews: bool = True,
        fetch_live: bool = False,
        final_preview: bool = False,
    ) -> None:
        self.client = client
        self.request = request
        self.cache_dir = Path(cache_dir)
        self.import_result = import_result
        self.fetch_previews = fetch_previews
        self.fetch_live = fetch_live
        self.final_preview = final_preview  # fetch the finished job's own preview before the import
        self.job_id: str | None = None
        self.status: JobStatus | None = None
        self.outcome = "running"
        self.error: str | None = None
        self.imported: Any = None
        self.target: Any = None  # where the caller will put the result (opaque here)
        self.preview_path: Path | None = None
        self.preview_version = 0  # bumps on every new preview, so the UI knows to reload it
        self._preview_step = -1
        self._preview_time = 0.0
        self.live_mesh: LiveMesh | None = None  # the latest live mesh fetched
        self.live_version = 0  # bumps on every new live mesh, so the viewport knows to update
        self._live_step: int | None = None
        self._live_time = 0.0
        self._cancel_requested = False
        self._next: str = "poll"
        self.retry_grace_s = RETRY_GRACE_S
        self.warning: str | None = None  # the last transient error while retrying
        self._failing_since: float | None = None

    # -- public ----------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.outcome != "running"

    @property
    def waiting_on_backend(self) -> bool:
        """True while the next tick polls (worth a pause); downloads and the import follow at once."""
        return self._next == "poll"

    @property
    def job_dir(self) -> Path:
        return self.cache_dir / (self.job_id or "unsubmitted")

    def start(self) -> None:
        """Submit the request (one call). Raises BackendError when the backend is down or refuses it."""
        self.status = self.client.submit(self.request)
        self.job_id = self.status.id

    def fail(self, message: str) -> None:
        """End the run as failed with `message` (e.g. it could not even be submitted)."""
        self._fail(message)

    def request_cancel(self) -> None:
        """Ask for a stop; the next tick tells the backend and ends the run as cancelled."""
        self._cancel_requested = True

    def tick(self) -> bool:
        """Advance by at most one HTTP call. Returns True once the run is finished."""
        if self.finished:
            return True
        try:
            if self._cancel_requested:
                self._cancel_on_backend()
            else:
                self._advance()
        except BackendError as exc:
            self._failed_call(exc)
        else:
            self.warning = None
            self._failing_since = None
        return self.finished

    def describe(self) -> str:
        """A one-line progress text: phase, step/steps and ETA."""
        st = self.status
        if st is None:
            return "submitting..."
        if self.outcome == "cancelled":
            return "cancelled"
        if self.outcome == "failed":
            return "failed"
        if self._next in ("mesh", "texture", "final preview"):
            return "downloading result..."
        if self._next == "import":
            return "importing..."
        if st.state == "queued":
            return "waiting in the backend's queue..."
        phase = st.phase or st.state
        text = f"{phase} {st.step}/{st.steps}" if st.steps else phase
        if st.eta_s is not None and st.state == "running":
            text += f", about {format_seconds(st.eta_s)} left"
        if self.warning:
            text += " (backend not answering, retrying)"
        return text

    # -- states ----------------------------------------------------------------------------------------
    def _advance(self) -> None:
        assert self.job_id is not None, "start() first"
        if self._next == "poll":
            self.status = self.client.job(self.job_id)
            st = self.status
            if st.state == "succeeded":
                self._next = "mesh"
            elif st.state == "failed":
                self._fail(st.error or "The backend reported a failure without details; see its log.")
            elif st.state == "cancelled":
                self.outcome = "cancelled"
            elif self._preview_due(st):
                self._next = "preview"
            elif self._live_due(st):
                self._next = "live"
        elif self._next == "preview":
            self._next = "poll"
            try:
                path = self.client.download(self.job_id, PREVIEW_PNG, self.job_dir / PREVIEW_PNG, quick=True)
            except BackendError as exc:
                if exc.status == 404:  # preview not written yet: not an error
                    return
                raise
            self.preview_path = path
            self.preview_version += 1
            self._preview_time = time.monotonic()
            self._preview_step = self.status.step if self.status else 0
        elif self._next == "live":
            self._next = "poll"
            self._fetch_live()
        elif self._next == "mesh":
            self.client.download(self.job_id, MESH_NPZ, self.job_dir / MESH_NPZ)
            self._next = "texture" if self._wants_texture() else self._after_download()
        elif self._next == "texture":
            self.client.download(self.job_id, TEXTURE_PNG, self.job_dir / TEXTURE_PNG)
            self._next = self._after_download()
        elif self._next == "final preview":
            self._next = "import"
            try:
                path = self.client.download(self.job_id, PREVIEW_PNG, self.job_dir / PREVIEW_PNG, quick=True)
            except BackendError as exc:
                if exc.status == 404:  # a run without previews
                    return
                raise
            self.preview_path = path
            self.preview_version += 1
        elif self._next == "import":
            assert self.status is not None
            texture = self.job_dir / TEXTURE_PNG if self._wants_texture() else None
            done = Downloaded(self.job_id, self.job_dir / MESH_NPZ, texture, self.status)
            try:
                self.imported = self.import_result(done)
            except BackendError as exc:  # e.g. a malformed result file: retrying cannot help
                self._fail(str(exc))
                return
            except Exception as exc:  # a broken result must end the run with a message, not a traceback
                self._fail(f"The result could not be imported into Blender: {exc}")
                return
            self.outcome = "succeeded"

    def _cancel_on_backend(self) -> None:
        self.outcome = "cancelled"
        if self.job_id is None:
            return
        try:
            self.status = self.client.cancel(self.job_id)
        except BackendError as exc:
            # A job that finished meanwhile (409) or a backend that went away: nothing left to stop.
            if not (exc.unreachable or exc.status in (404, 409)):
                self.error = str(exc)

    def _preview_due(self, st: JobStatus) -> bool:
        return (
            self.fetch_previews
            and PREVIEW_PNG in st.artifacts
            and st.step != self._preview_step
            and time.monotonic() - self._preview_time >= PREVIEW_INTERVAL_S
        )

    def _live_due(self, st: JobStatus) -> bool:
        return (
            self.fetch_live
            and st.state == "running"
            and st.live_step is not None
            and st.live_step != self._live_step
            and time.monotonic() - self._live_time >= LIVE_INTERVAL_S
        )

    def _fetch_live(self) -> None:
        """Fetch the latest live mesh. Best effort: a live mesh that does not come (the job ended, the
        backend is slow, a bad file) is skipped, never the end of the run."""
        assert self.job_id is not None and self.status is not None
        self._live_time = time.monotonic()
        self._live_step = self.status.live_step  # not asked for again, whatever happens below
        try:
            path = self.client.download(self.job_id, LIVE_NPZ, self.job_dir / LIVE_NPZ, quick=True)
            live = read_live_npz(path)
        except BackendError:
            return
        self.live_mesh = live
        self._live_step = live.step
        self.live_version += 1

    def _after_download(self) -> str:
        return "final preview" if self.final_preview else "import"

    def _wants_texture(self) -> bool:
        return self.status is not None and TEXTURE_PNG in self.status.artifacts

    def _failed_call(self, exc: BackendError) -> None:
        """Retry no answer (timeout, connection lost, HTTP 5xx) within the grace time; fail on anything else."""
        transient = exc.status is None or exc.status >= 500
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if transient and now - self._failing_since < self.retry_grace_s:
            self.warning = str(exc)  # the state is unchanged: the next tick makes the same call again
            return
        self._fail(str(exc))

    def _fail(self, message: str) -> None:
        self.outcome = "failed"
        self.error = message


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def run_blocking(
    run: GenerationRun,
    *,
    timeout_s: float | None = None,
    poll_interval_s: float = 0.5,
    on_progress: Callable[[GenerationRun], None] | None = None,
) -> GenerationRun:
    """Run to the end synchronously (no timers fire in `bpy.app.background`).

    Past `timeout_s` the job is cancelled on the backend and the run ends as failed with a message.
    """
    if run.job_id is None:
        run.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not run.tick():
        if on_progress is not None:
            on_progress(run)
        if deadline is not None and time.monotonic() > deadline:
            run.request_cancel()
            run.tick()
            run.outcome = "failed"
            run.error = f"The generation did not finish within {timeout_s:g} s and was cancelled."
            break
        if run.waiting_on_backend:
            time.sleep(poll_interval_s)
    if on_progress is not None:
        on_progress(run)
    return run
