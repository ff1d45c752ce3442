"""Jobs on disk and the one worker thread that runs them.

Layout: `<data_dir>/jobs/<id>/` holds `request.json` (the validated API request), `state.json` (progress
and outcome), `preview.png` and the engine's results (`mesh.glb`, `mesh.npz`, `texture.png`). Every file
is written atomically, so a crash never leaves half a file; on start-up the store reads the folders back
(the service holds the data folder's lock, `datalock.py`): finished jobs are served again, queued jobs run,
a job that was running is marked failed, and a folder whose files are damaged is listed as failed and left
as it is. Temporary files of a killed writer are removed; files are never served through a link.

The in-memory `Job` is the truth the HTTP side reads (under one short lock, never held during I/O);
`state.json` follows it at phase changes and at most once per `state_interval` while optimizing, so
persistence does not slow the engine down. The latest live mesh of the running job (`engine/live.py`) is
kept in memory only, as the whole `live.npz` it is served as, and dropped when the job ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from backend.config import config_from_dict
from backend.errors import DreamsmithError, GenerationCancelled, InvalidConfig
from backend.fileio import (
    check_output_folder,
    remove_orphan_temporaries,
    result_bytes_bound,
    write_bytes_atomic,
    write_json_atomic,
)
from backend.service.schemas import ARTIFACTS, ApiError

log = logging.getLogger("dreamsmith.service")

JOB_ID = re.compile(r"[0-9a-f]{32}")
FINISHED = ("succeeded", "failed", "cancelled")
# The engine's results: the downloadable ones and the saved field (field.pt, kept for re-export and warm starts).
RESULTS = (*(name for name in ARTIFACTS if name != "preview.png"), "field.pt")
INTERRUPTED = "interrupted: the backend stopped while this job was running; submit it again"
DAMAGED = "its record is damaged ({reason}); its files are kept in {folder}, delete the job to remove them"
# request.json and state.json are a few KiB; anything far larger is not ours and is not read whole.
MAX_RECORD_BYTES = 1 << 20
# state.json fields and the JSON types each may have (None: null); anything else marks the job damaged.
RECORD_FIELDS: dict[str, tuple[type | None, ...]] = {
    "state": (str,),
    "phase": (str, None),
    "step": (int,),
    "steps": (int,),
    "t": (int, None),
    "loss": (float, None),
    "elapsed_s": (float,),
    "eta_s": (float, None),
    "error": (str, None),
    "created_at": (float,),
    "finished_at": (float, None),
    "warnings": (list,),
}
OOM_HINT = (
    "the {memory} ran out of memory: try a smaller render_size (e.g. 64) or export.mesh_resolution, "
    "or close other programs that use it"
)
# Signature of backend.engine.pipeline.generate (injected so tests can run a fake engine).
GenerateFn = Callable[..., Any]


def new_job_id() -> str:
    return secrets.token_hex(16)


@dataclass
class Job:
    id: str
    request: dict[str, Any]
    dir: Path
    created_at: float
    seq: int = 0
    state: str = "queued"
    phase: str | None = None
    step: int = 0
    steps: int = 0
    t: int | None = None
    loss: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    error: str | None = None
    finished_at: float | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. a prompt outside a generator's training set
    artifacts: list[str] = field(default_factory=list)
    # Live-only fields (not persisted).
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    preview: bytes | None = field(default=None, repr=False)  # latest preview, newer than the file
    live: tuple[int, bytes] | None = field(default=None, repr=False)  # (step, live.npz) while running
    started_mono: float | None = None
    progress_mono: float | None = None
    outcome: str | None = None  # decided by `JobStore.finish` just before the state is set

    def status(self) -> dict[str, Any]:
        """The API status object (docs/design.md, "HTTP API"). Call with the store lock held."""
        elapsed, eta = self.elapsed_s, self.eta_s
        if self.state == "running" and self.started_mono is not None:
            now = time.monotonic()
            elapsed = now - self.started_mono
            if eta is not None and self.progress_mono is not None:
                eta = max(0.0, eta - (now - self.progress_mono))
        return {
            "id": self.id,
            "state": self.state,
            "phase": self.phase,
            "step": self.step,
            "steps": self.steps,
            "t": self.t,
            "loss": self.loss,
            "elapsed_s": round(elapsed, 3),
            "eta_s": None if eta is None else round(eta, 3),
            "error": self.error,
            "warnings": list(self.warnings),
            "artifacts": list(self.artifacts),
            "request": self.request,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "live_step": None if self.live is None else self.live[0],
        }

    def record(self) -> dict[str, Any]:
        """What state.json holds (the request has its own file; live meshes live in memory only)."""
        status = self.status()
        del status["request"], status["artifacts"], status["live_step"]
        return status


def _finite(value: float | None) -> float | None:
    # JSON has no NaN/inf; a diverging loss is reported as null (the job fails with a message anyway).
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


class DamagedRecord(ValueError):
    """A job file that is missing, unreadable, too large, or not the shape this backend writes."""


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _read_record(path: Path, missing: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job's JSON object file, read at most MAX_RECORD_BYTES; `missing` is returned when there is none."""
    try:
        with open_regular(path) as f:
            raw = f.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        if missing is not None:
            return dict(missing)
        raise DamagedRecord(f"no {path.name}") from None
    except OSError as exc:
        raise DamagedRecord(f"{path.name} is unreadable: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECORD_BYTES:
        raise DamagedRecord(f"{path.name} is larger than {MAX_RECORD_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise DamagedRecord(f"{path.name} is not valid JSON") from None
    if not isinstance(data, dict):
        raise DamagedRecord(f"{path.name} is not a JSON object")
    return data


def _check_record(state: dict[str, Any]) -> None:
    """Raise DamagedRecord unless every known field of state.json has the type this backend writes."""
    for name, kinds in RECORD_FIELDS.items():
        if name not in state:
            continue
        value = state[name]
        if value is None and None in kinds:
            continue
        if int in kinds and not (isinstance(value, int) and not isinstance(value, bool)):
            raise DamagedRecord(f"state.json: {name} is not an integer")
        if float in kinds and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            raise DamagedRecord(f"state.json: {name} is not a number")
        if str in kinds and not isinstance(value, str):
            raise DamagedRecord(f"state.json: {name} is not a text")
        if list in kinds and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise DamagedRecord(f"state.json: {name} is not a list of texts")
    if state.get("state", "queued") not in ("queued", "running", *FINISHED):
        raise DamagedRecord(f"state.json: unknown state {state['state']!r}")


def open_regular(path: Path) -> BinaryIO:
    """Open a job's file for reading, refusing a symbolic link, a pipe or anything but a regular file
    (FileNotFoundError), so a link planted in a job folder never serves another file."""
    if not hasattr(os, "O_NOFOLLOW") and path.is_symlink():  # Windows: no O_NOFOLLOW
        raise FileNotFoundError(f"{path} is a link")
    # O_NONBLOCK: opening a named pipe must not wait for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_BINARY", 0)  # Windows: no newline translation
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileNotFoundError(f"{path} is a link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileNotFoundError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def is_regular_file(path: Path) -> bool:
    """True for a regular file that is not a symbolic link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class JobStore:
    """All jobs of one data directory, the run queue, and their files."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._seq = 0
        # One writer at a time per job folder keeps state.json in the order the states happened.
        self._io_locks: dict[str, threading.Lock] = {}

    # ---- start-up -------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the job folders back after a (re)start. The caller holds the data folder's lock."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.jobs_dir.glob(".deleted-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        jobs: list[Job] = []
        for folder in self.jobs_dir.iterdir():
            if not JOB_ID.fullmatch(folder.name):
                continue
            if folder.is_symlink() or not folder.is_dir():  # files are served from real job folders only
                log.warning("skipping %s: not a job folder (a link or a file)", folder)
                continue
            # A process killed while writing leaves its temporary files behind.
            remove_orphan_temporaries(folder)
            jobs.append(self._read_job(folder))
        jobs.sort(key=lambda j: j.created_at)
        interrupted = []
        with self._lock:
            for job in jobs:
                job.seq = self._next_seq()
                self._jobs[job.id] = job
                self._io_locks[job.id] = threading.Lock()
                if job.state == "running":
                    job.state, job.error, job.finished_at = "failed", INTERRUPTED, time.time()
                    interrupted.append(job)
                elif job.state == "queued":
                    self._queue.append(job.id)
        for job in interrupted:
            self.persist(job)
        if jobs:
            log.info(
                "loaded %d jobs (%d queued, %d interrupted)", len(jobs), len(self._queue), len(interrupted)
            )

    def _read_job(self, folder: Path) -> Job:
        """The job of one folder; a damaged record gives a failed job that says so (its files untouched)."""
        try:
            request = _read_record(folder / "request.json")
            state = _read_record(folder / "state.json", missing={})  # queued before its first state
            _check_record(state)
        except DamagedRecord as exc:
            log.warning("job folder %s is damaged: %s", folder, exc)
            created = _mtime(folder)
            job = Job(id=folder.name, request={}, dir=folder, created_at=created, finished_at=created)
            job.state, job.error = "failed", DAMAGED.format(reason=exc, folder=folder)
            with contextlib.suppress(DamagedRecord):
                job.request = _read_record(folder / "request.json")
            job.artifacts = self._artifacts_on_disk(job)
            return job
        created = float(state.get("created_at") or _mtime(folder))
        job = Job(id=folder.name, request=request, dir=folder, created_at=created)
        for name in RECORD_FIELDS.keys() - {"created_at"}:
            if name in state:
                setattr(job, name, state[name])
        job.artifacts = self._artifacts_on_disk(job)
        return job

    def _artifacts_on_disk(self, job: Job) -> list[str]:
        # Results count only for a finished, successful job; any job may have a preview.
        names = ARTIFACTS if job.state == "succeeded" else ("preview.png",)
        return [n for n in names if is_regular_file(job.dir / n)]

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ---- HTTP side ------------------------------------------------------------------------------------

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Save a validated request as a new queued job; its files exist before it can run."""
        job_id = new_job_id()
        folder = self.jobs_dir / job_id
        job = Job(id=job_id, request=request, dir=folder, created_at=time.time())
        job.steps = int(request.get("steps", 0))
        try:
            folder.mkdir(parents=True)
            write_json_atomic(folder / "request.json", request)
            write_json_atomic(folder / "state.json", job.record())
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(503, "storage_error", f"could not save the job in {folder}: {exc}") from exc
        with self._lock:
            job.seq = self._next_seq()
            self._jobs[job_id] = job
            self._io_locks[job_id] = threading.Lock()
            self._queue.append(job_id)
            self._wake.notify_all()
        log.info("job %s queued: %r", job_id, request.get("prompt"))
        return {"id": job_id, "state": "queued"}

    def check_init_job(self, job_id: str) -> None:
        """A Refine's `init_job` must name a job that has, or will have, a field (ApiError 422 if not)."""
        with self._lock:
            job = self._jobs.get(job_id)
            state = None if job is None else (job.outcome or job.state)
        if job is None:
            raise ApiError(422, "invalid_request", "init_job: no job with this id", "init_job")
        if state in ("failed", "cancelled"):
            raise ApiError(
                422, "invalid_request", f"init_job: that job {state}, so it has no field", "init_job"
            )

    def field_of(self, job_id: str) -> Any:
        """The field checkpoint a finished job left (`FieldCheckpoint`); DreamsmithError when there is none."""
        from backend.engine.checkpoint import FILENAME, load_checkpoint

        with self._lock:
            job = self._jobs.get(job_id)
            state = None if job is None else job.state
        if job is None or state != "succeeded" or not is_regular_file(job.dir / FILENAME):
            raise DreamsmithError(
                f"init_job {job_id} has no field to start from (it was deleted, or did not succeed); "
                "submit the Refine again with a finished job"
            )
        return load_checkpoint(job.dir / FILENAME)

    def _get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise ApiError(404, "not_found", "no job with this id (it may have been deleted)", "id")
        return job

    def status(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._get(job_id).status()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.seq, reverse=True)
            return [j.status() for j in jobs]

    def queued(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.state == "queued")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Queued: cancelled now. Running: the engine stops at its next check (seconds at most, in every
        phase) and the job ends cancelled. Cancelled: no-op."""
        with self._lock:
            job = self._get(job_id)
            ended = job.outcome or job.state
            if ended in ("succeeded", "failed"):
                raise ApiError(409, "conflict", f"the job already {ended}; there is nothing to cancel")
            persist = job.state == "queued"
            if persist:
                job.state, job.finished_at = "cancelled", time.time()
                self._queue.remove(job_id)
            job.cancel.set()
            status = job.status()
        if persist:
            self.persist(job)
            log.info("job %s cancelled while queued", job_id)
        return status

    def delete(self, job_id: str) -> None:
        """Forget a job that is not running and remove its folder."""
        with self._lock:
            job = self._get(job_id)
            if job.state == "running":
                raise ApiError(409, "conflict", "the job is running: cancel it first, then delete it")
            del self._jobs[job_id]
            if job_id in self._queue:
                self._queue.remove(job_id)
            io_lock = self._io_locks.pop(job_id)
        with io_lock:
            # Rename first so a crash mid-delete never leaves a half job folder that loads again.
            trash = self.jobs_dir / f".deleted-{job_id}-{secrets.token_hex(4)}"
            try:
                job.dir.rename(trash)
            except FileNotFoundError:
                return
            except OSError as exc:
                with self._lock:
                    self._jobs[job_id] = job
                    self._io_locks[job_id] = io_lock
                raise ApiError(409, "conflict", f"could not delete the job's files: {exc}") from exc
            shutil.rmtree(trash, ignore_errors=True)
        log.info("job %s deleted", job_id)

    def artifact(self, job_id: str, name: str) -> tuple[bytes | None, Path]:
        """(latest in-memory preview or None, file path) for an artifact the job has; else 404."""
        with self._lock:
            job = self._get(job_id)
            if name not in job.artifacts:
                raise ApiError(404, "not_found", f"this job has no {name} (yet)")
            live = job.preview if name == "preview.png" else None
            return live, job.dir / name

    def live_mesh(self, job_id: str) -> tuple[int, bytes]:
        """(step, whole live.npz) of the job's latest live mesh; 404 before its first one and once it ended."""
        with self._lock:
            live = self._get(job_id).live
        if live is None:
            raise ApiError(404, "not_found", "this job has no live mesh (not yet, or it has ended)")
        return live

    # ---- worker side ----------------------------------------------------------------------------------

    def next_job(self, stop: threading.Event, timeout: float = 0.5) -> Job | None:
        """Pop the oldest queued job and mark it running; None when asked to stop."""
        with self._wake:
            while not stop.is_set():
                while self._queue:
                    job = self._jobs.get(self._queue.popleft())
                    if job is not None and job.state == "queued":
                        job.state = "running"
                        job.started_mono = time.monotonic()
                        return job
                self._wake.wait(timeout)
        return None

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def update(self, job: Job, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(job, name, value)

    def persist(self, job: Job, preview: bytes | None = None) -> None:
        """Write state.json (and a preview) for `job`; a failing disk is logged, never fatal."""
        with self._lock:
            record = job.record()
            io_lock = self._io_locks.get(job.id)
        if io_lock is None:  # deleted meanwhile
            return
        with io_lock:
            if not job.dir.is_dir():
                return
            try:
                if preview is not None:
                    write_bytes_atomic(job.dir / "preview.png", preview)
                write_json_atomic(job.dir / "state.json", record)
            except OSError as exc:
                log.warning("could not save the state of job %s: %s", job.id, exc)

    def finish(self, job: Job, state: str, error: str | None = None) -> None:
        """Record the outcome; files first, so a client never sees an artifact name without its file.

        A job whose cancel was accepted ends cancelled whatever the engine did after it (the cancel
        answered 200, so it holds); once the outcome is decided here, a cancel gets 409. A job that does
        not succeed keeps no result files (a half-written set must not be mistaken for a result).
        """
        with self._lock:
            if job.cancel.is_set():
                state, error = "cancelled", None
            job.outcome = state
        pending = job.preview  # written by the worker thread only, as is this call
        # A successful engine run writes its own final preview.png; otherwise keep the latest one.
        if pending is not None and not (state == "succeeded" and is_regular_file(job.dir / "preview.png")):
            self.persist(job, preview=pending)
        if state != "succeeded":
            for name in RESULTS:
                with contextlib.suppress(OSError):
                    (job.dir / name).unlink(missing_ok=True)
            remove_orphan_temporaries(job.dir)
        names = ARTIFACTS if state == "succeeded" else ("preview.png",)
        artifacts = [n for n in names if is_regular_file(job.dir / n)]
        with self._lock:
            job.state, job.error, job.finished_at = state, error, time.time()
            if job.started_mono is not None:
                job.elapsed_s = time.monotonic() - job.started_mono
            job.eta_s = 0.0 if state == "succeeded" else None
            job.artifacts, job.preview, job.live = artifacts, None, None
        self.persist(job)


class Worker:
    """The one thread that owns the engine (models, GPU) and runs jobs one at a time, oldest first."""

    def __init__(
        self,
        store: JobStore,
        generate: GenerateFn | None = None,
        priors: Any = None,
        device: str = "auto",
        state_interval: float = 1.0,
        preview_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.device = device
        self.state_interval = state_interval
        self.preview_interval = preview_interval
        self._generate = generate
        self._priors = priors
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loaded_models: list[str] = []  # snapshot of priors.loaded(), refreshed by this thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dreamsmith-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop after the current step; the interrupted job is marked failed, queued jobs stay queued.
        Returns False when the thread is still running after `timeout` seconds."""
        self._stop.set()
        self.store.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the worker did not stop within %.0f s", timeout)
                return False
            self._thread = None
        return True

    def _engine(self) -> tuple[GenerateFn, Any]:
        if self._generate is None:
            from backend.engine.pipeline import generate
            from backend.engine.prior import PriorCache

            self._generate = generate
            if self._priors is None:
                self._priors = PriorCache()
        return self._generate, self._priors

    def _run(self) -> None:
        while True:
            job = self.store.next_job(self._stop)
            if job is None:
                return
            try:
                self._execute(job)
            except BaseException:  # the worker must survive anything a job does
                log.exception("job %s: unexpected error in the worker", job.id)
                if job.state == "running":
                    self.store.finish(job, "failed", "internal error in the backend; see its log")

    def _execute(self, job: Job) -> None:
        log.info("job %s running", job.id)
        self.store.persist(job)
        last_state = last_preview = time.monotonic()
        pending_preview = False

        def on_progress(p: Any) -> None:
            nonlocal last_state, last_preview, pending_preview
            now = time.monotonic()
            phase_changed = p.phase != job.phase
            changes: dict[str, Any] = dict(
                phase=p.phase, step=int(p.step), steps=int(p.steps), progress_mono=now, eta_s=p.eta_s
            )
            if p.t is not None:
                changes["t"] = int(p.t)
            if p.loss is not None:
                changes["loss"] = _finite(p.loss)
            warnings = list(getattr(p, "warnings", ()))
            if warnings and warnings != job.warnings:
                changes["warnings"] = warnings
                phase_changed = True  # written to state.json at once
            if p.preview_png is not None:
                changes["preview"] = p.preview_png
                if "preview.png" not in job.artifacts:
                    changes["artifacts"] = [*job.artifacts, "preview.png"]
                pending_preview = True
            live = getattr(p, "live_mesh", None)
            if live is not None:  # serialized here, on the worker thread: the route sends the bytes whole
                changes["live"] = (int(live.step), live.npz_bytes())
            self.store.update(job, **changes)
            if phase_changed and self._priors is not None and hasattr(self._priors, "loaded"):
                self.loaded_models = list(self._priors.loaded())
            write_preview = pending_preview and now - last_preview >= self.preview_interval
            if phase_changed or write_preview or now - last_state >= self.state_interval:
                self.store.persist(job, preview=job.preview if write_preview else None)
                last_state = now
                if write_preview:
                    last_preview, pending_preview = now, False

        def should_stop() -> bool:
            return job.cancel.is_set() or self._stop.is_set()

        try:
            generate, priors = self._engine()
            cfg = dataclasses.replace(config_from_dict(job.request), device=self.device)
            # A full or unwritable data folder fails the job now, not after the optimization.
            export = cfg.export
            check_output_folder(
                job.dir, result_bytes_bound(export.target_faces, export.texture_size, export.texture == "uv")
            )
            init_field = self.store.field_of(cfg.init_job) if cfg.init_job is not None else None
            generate(
                cfg,
                job.dir,
                on_progress=on_progress,
                should_stop=should_stop,
                priors=priors,
                init_field=init_field,
                resumable_checkpoint=False,  # jobs are not resumed: the weights alone, a third of the size
                live_meshes=True,  # every `live_every` steps, for the add-on's viewport (0: none)
            )
        except GenerationCancelled:
            if job.cancel.is_set():
                self.store.finish(job, "cancelled")
            else:
                self.store.finish(job, "failed", INTERRUPTED)
        except InvalidConfig as exc:
            self.store.finish(job, "failed", f"invalid request: {exc}")
        except DreamsmithError as exc:
            self.store.finish(job, "failed", str(exc) or type(exc).__name__)
        except Exception as exc:
            if isinstance(exc, MemoryError):
                self.store.finish(job, "failed", OOM_HINT.format(memory="computer"))
            elif _is_gpu_out_of_memory(exc):
                self.store.finish(job, "failed", OOM_HINT.format(memory="GPU"))
            elif isinstance(exc, OSError):  # the disk, not the engine: full, read-only, folder removed
                where = f" ({exc.filename})" if exc.filename else ""
                self.store.finish(
                    job,
                    "failed",
                    f"could not use the job's files{where}: {exc.strerror or exc}; check the free space "
                    f"and permissions of {self.store.data_dir}",
                )
            else:
                log.error("job %s failed with an internal error", job.id, exc_info=exc)
                _write_traceback(job, exc)
                self.store.finish(
                    job, "failed", f"internal error ({type(exc).__name__}: {exc}); see the backend log"
                )
        else:
            self.store.finish(job, "succeeded")
        finally:
            if self._priors is not None and hasattr(self._priors, "loaded"):
                self.loaded_models = list(self._priors.loaded())
            _release_gpu_memory()
        log.info("job %s %s%s", job.id, job.state, f": {job.error}" if job.error else "")


def _is_gpu_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _release_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def _write_traceback(job: Job, exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc))
    with contextlib.suppress(OSError):
        write_bytes_atomic(job.dir / "error.log", text.encode("utf-8"))
