"""The HTTP client for the Dreamsmith backend: the only file in the add-on that knows the wire.

Everything that crosses the boundary is plain data (dataclasses below); every failure becomes one
`BackendError` whose message says what happened and what to do next, whatever the server sends:

- each call ends by its deadline (short for status calls, so a stuck or absent backend never freezes
  Blender; longer for result downloads), however slowly the server answers (`_Deadline`);
- answers are capped in size (JSON in memory, downloads streamed to a file);
- every field of an answer is checked for the type the API promises (`_Fields`).

Standard library only (urllib), so the add-on needs nothing installed into Blender's Python.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import json
import math
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_URL = "http://127.0.0.1:8765"
# Whole-call deadlines. Status calls run on Blender's UI thread (one per timer tick): keep them short.
STATUS_TIMEOUT_S = 3.0
# Downloads of results are larger (tens of MiB at the API's largest settings).
DOWNLOAD_TIMEOUT_S = 120.0
# What an answer may weigh: a job list of a few thousand jobs is a few MiB; a result file is tens of MiB.
MAX_JSON_BYTES = 16 << 20
MAX_DOWNLOAD_BYTES = 1 << 30
MAX_ERROR_BYTES = 64 << 10

TEXTURE_MODES = ("vertex", "uv")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")

PREVIEW_PNG = "preview.png"
MESH_NPZ = "mesh.npz"
MESH_GLB = "mesh.glb"
TEXTURE_PNG = "texture.png"
ARTIFACTS = (PREVIEW_PNG, MESH_NPZ, MESH_GLB, TEXTURE_PNG)
# The running job's latest coarse mesh (not an artifact: it exists only while the job runs).
LIVE_NPZ = "live.npz"
DOWNLOADS = (*ARTIFACTS, LIVE_NPZ)

START_HINT = "start it from the add-on preferences or run `python -m backend serve`"


class BackendError(Exception):
    """A failed call to the backend, with a message meant for the artist.

    `unreachable` is true when nothing answered at the URL (so "start the backend" is the fix);
    `status`, `code` and `field` carry the backend's own error details when it answered with one.
    """

    def __init__(
        self,
        message: str,
        *,
        unreachable: bool = False,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.unreachable = unreachable
        self.status = status
        self.code = code
        self.field = field

    def __str__(self) -> str:
        return self.message


class _Fields:
    """Reads an answer's fields with the types the API promises; anything else is a BackendError (a raw
    ValueError or TypeError would escape the callers, which handle BackendError only)."""

    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, dict):
            raise _malformed(what, "it is not a JSON object")
        self.data: dict[str, Any] = data
        self.what = what

    def _get(self, key: str, default: object) -> object:
        value = self.data.get(key, default)
        return default if value is None else value

    def _wrong(self, key: str, kind: str) -> BackendError:
        return _malformed(self.what, f"'{key}' is not {kind}")

    def text(self, key: str, default: str = "") -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._wrong(key, "a text")
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self.data.get(key) is None else self.text(key)

    def integer(self, key: str, default: int = 0) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer")
        return value

    def optional_integer(self, key: str) -> int | None:
        return None if self.data.get(key) is None else self.integer(key)

    def number(self, key: str, default: float = 0.0) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._wrong(key, "a finite number")
        return float(value)

    def optional_number(self, key: str) -> float | None:
        return None if self.data.get(key) is None else self.number(key)

    def texts(self, key: str) -> list[str]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong(key, "a list of texts")
        return list(value)

    def objects(self, key: str) -> list[dict[str, Any]]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._wrong(key, "a list of objects")
        return list(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key, {})
        if not isinstance(value, dict):
            raise self._wrong(key, "an object")
        return value


def _malformed(what: str, problem: str) -> BackendError:
    return BackendError(
        f"The backend sent a malformed {what} ({problem}); is it a Dreamsmith backend of this add-on's version?"
    )


# ---------------------------------------------------------------------------------------------------------
# Plain data crossing the boundary


@dataclass
class MethodChoice:
    """One score distillation method the backend offers (GET /v1/health's `method_details`)."""

    name: str
    title: str
    description: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MethodChoice:
        fields = _Fields(data, "method description")
        return cls(fields.text("name"), fields.text("title"), fields.text("description"))


@dataclass
class Health:
    version: str
    device: str
    methods: list[str]
    method_details: list[MethodChoice]
    default_method: str
    default_model: str
    loaded_models: list[str]
    queue: int
    generators: list[str] = field(default_factory=list)  # built-in generators for Instant, by name

    @classmethod
    def from_json(cls, data: object) -> Health:
        fields = _Fields(data, "health answer")
        models = _Fields(fields.mapping("models"), "health answer's models")
        return cls(
            version=fields.text("version", "?"),
            device=fields.text("device", "?"),
            methods=fields.texts("methods"),
            method_details=[MethodChoice.from_json(m) for m in fields.objects("method_details")],
            default_method=fields.text("default_method"),
            default_model=models.text("default"),
            loaded_models=models.texts("loaded"),
            queue=fields.integer("queue"),
            generators=[_Fields(g, "generator").text("name") for g in fields.objects("generators")],
        )

    def summary(self) -> str:
        return f"version {self.version} on {self.device}, {self.queue} job(s) queued"


@dataclass
class JobStatus:
    id: str
    state: str
    phase: str | None = None
    step: int = 0
    steps: int = 0
    t: int | None = None
    loss: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # why the result may not match the prompt
    artifacts: list[str] = field(default_factory=list)
    request: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    finished_at: float | None = None
    live_step: int | None = None  # step of the latest live mesh while running (GET live.npz)

    @classmethod
    def from_json(cls, data: object) -> JobStatus:
        if not isinstance(data, dict) or "id" not in data or "state" not in data:
            raise BackendError(
                "The backend sent a job status without an id or state; is it a Dreamsmith backend?"
            )
        fields = _Fields(data, "job status")
        state = fields.text("state")
        if state not in JOB_STATES:
            raise _malformed("job status", f"unknown state {state[:40]!r}")
        return cls(
            id=fields.text("id"),
            state=state,
            phase=fields.optional_text("phase"),
            step=fields.integer("step"),
            steps=fields.integer("steps"),
            t=fields.optional_integer("t"),
            loss=fields.optional_number("loss"),
            elapsed_s=fields.number("elapsed_s"),
            eta_s=fields.optional_number("eta_s"),
            error=fields.optional_text("error"),
            warnings=fields.texts("warnings"),
            artifacts=fields.texts("artifacts"),
            request=fields.mapping("request"),
            created_at=fields.number("created_at"),
            finished_at=fields.optional_number("finished_at"),
            live_step=fields.optional_integer("live_step"),
        )

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def progress(self) -> float:
        """Fraction of optimization steps done, in [0, 1]."""
        if self.state == "succeeded":
            return 1.0
        if self.steps <= 0:
            return 0.0
        return max(0.0, min(1.0, self.step / self.steps))


@dataclass
class CameraRanges:
    """Ranges the backend draws training cameras from (degrees and scene units, Z up)."""

    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    distance: tuple[float, float] = (1.8, 2.2)
    fov_deg: tuple[float, float] = (40.0, 50.0)
    front_azimuth_deg: float = 0.0


@dataclass
class ExportOptions:
    mesh_resolution: int = 128
    texture: str = "vertex"
    texture_size: int = 1024
    target_faces: int = 50000
    smoothing: float = 1.0
    auto_level: str = "auto"


@dataclass
class GenerationRequest:
    """One `POST /v1/jobs` body.

    "Backend default" (the field is left out of the body, so the backend's tuned value applies):
    `steps` 0, `render_size` 0, `guidance_scale` 0 or None (the method's default), an empty `model`
    (the demo prior). `generator` (Instant: a trained generator makes the shape in one pass) and
    `init_job` (Refine: optimize from that job's field) are sent only when set.
    """

    prompt: str
    negative_prompt: str = ""
    method: str = "tp-sds"
    steps: int = 0
    seed: int = 0
    guidance_scale: float | None = None
    model: str | None = None
    render_size: int = 0
    preview_every: int = 50
    live_every: int = 25
    camera: CameraRanges = field(default_factory=CameraRanges)
    export: ExportOptions = field(default_factory=ExportOptions)
    generator: str | None = None
    init_job: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "method": self.method,
            "seed": int(self.seed),
            "preview_every": int(self.preview_every),
            "live_every": int(self.live_every),
            "camera": {
                "elevation_deg": [float(v) for v in self.camera.elevation_deg],
                "azimuth_deg": [float(v) for v in self.camera.azimuth_deg],
                "distance": [float(v) for v in self.camera.distance],
                "fov_deg": [float(v) for v in self.camera.fov_deg],
                "front_azimuth_deg": float(self.camera.front_azimuth_deg),
            },
            "export": {
                "mesh_resolution": int(self.export.mesh_resolution),
                "texture": self.export.texture,
                "texture_size": int(self.export.texture_size),
                "target_faces": int(self.export.target_faces),
                "smoothing": float(self.export.smoothing),
                "auto_level": self.export.auto_level,
            },
        }
        if self.steps:
            body["steps"] = int(self.steps)
        if self.render_size:
            body["render_size"] = int(self.render_size)
        if self.guidance_scale:
            body["guidance_scale"] = float(self.guidance_scale)
        if self.model and self.model.strip():
            body["model"] = self.model.strip()
        if self.generator and self.generator.strip():
            body["generator"] = self.generator.strip()
        if self.init_job:
            body["init_job"] = self.init_job
        return body

    def resolved(self, backend_request: dict[str, Any]) -> GenerationRequest:
        """This request with the values the backend actually used filled in (its job's `request`), so a
        stored result records e.g. the real step count rather than "backend default"."""
        known = {k: v for k, v in (backend_request or {}).items() if v is not None}
        if not known:
            return self
        try:
            return GenerationRequest.from_json({**self.to_json(), **known})
        except (TypeError, ValueError, IndexError, KeyError):  # an odd status: keep what was sent
            return self

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationRequest:
        """Read a request body back (as stored with a result); missing fields mean "backend default"."""
        cam = data.get("camera") or {}
        exp = data.get("export") or {}
        defaults_cam = CameraRanges()
        defaults_exp = ExportOptions()

        def pair(key: str) -> tuple[float, float]:
            value = cam.get(key, getattr(defaults_cam, key))
            return (float(value[0]), float(value[1]))

        return cls(
            prompt=str(data.get("prompt", "")),
            negative_prompt=str(data.get("negative_prompt", "")),
            method=str(data.get("method", "tp-sds")),
            steps=int(data.get("steps") or 0),
            seed=int(data.get("seed", 0)),
            guidance_scale=data.get("guidance_scale"),
            model=data.get("model"),
            generator=data.get("generator"),
            init_job=data.get("init_job"),
            render_size=int(data.get("render_size") or 0),
            preview_every=int(data.get("preview_every", 50)),
            live_every=int(data.get("live_every", 25)),
            camera=CameraRanges(
                elevation_deg=pair("elevation_deg"),
                azimuth_deg=pair("azimuth_deg"),
                distance=pair("distance"),
                fov_deg=pair("fov_deg"),
                front_azimuth_deg=float(cam.get("front_azimuth_deg", defaults_cam.front_azimuth_deg)),
            ),
            export=ExportOptions(
                mesh_resolution=int(exp.get("mesh_resolution", defaults_exp.mesh_resolution)),
                texture=str(exp.get("texture", defaults_exp.texture)),
                texture_size=int(exp.get("texture_size", defaults_exp.texture_size)),
                target_faces=int(exp.get("target_faces", defaults_exp.target_faces)),
                smoothing=float(exp.get("smoothing", defaults_exp.smoothing)),
                auto_level=str(exp.get("auto_level", defaults_exp.auto_level)),
            ),
        )


@dataclass
class MeshArrays:
    """The content of `mesh.npz`: Z-up object within [-1, 1], front toward -Y.

    vertices float32 [N, 3]; faces int32 [M, 3]; colors uint8 [N, 4] sRGB RGBA;
    uvs float32 [N, 2] per vertex (vertices are split at UV seams; v = 0 at the image bottom) or None.
    """

    vertices: npt.NDArray[np.float32]
    faces: npt.NDArray[np.int32]
    colors: npt.NDArray[np.uint8]
    uvs: npt.NDArray[np.float32] | None = None


@dataclass
class LiveMesh:
    """The content of `live.npz`: a coarse mesh of a running job's field after `step` steps (no UVs)."""

    step: int
    mesh: MeshArrays


def read_live_npz(path: Path | str) -> LiveMesh:
    """Load and check a live mesh file (mesh.npz's arrays and `step`); BackendError when malformed."""
    arrays = _load_npz(path)
    step = arrays.get("step")
    if step is None or step.shape != () or step.dtype.kind not in "iu":
        raise BackendError(f"The live mesh file {path} has no integer 'step'; backend and add-on disagree.")
    return LiveMesh(step=int(step), mesh=_mesh_arrays(arrays, path))


def _load_npz(path: Path | str) -> dict[str, npt.NDArray[Any]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BackendError(f"The result file {path} could not be read ({exc}); generate again.") from exc


def read_mesh_npz(path: Path | str) -> MeshArrays:
    """Load and check a result file; a malformed file raises BackendError naming the problem."""
    return _mesh_arrays(_load_npz(path), path)


def _mesh_arrays(arrays: dict[str, npt.NDArray[Any]], path: Path | str) -> MeshArrays:
    for name in ("vertices", "faces", "colors"):
        if name not in arrays:
            raise BackendError(f"The result file {path} has no '{name}' array; backend and add-on disagree.")
    vertices = np.ascontiguousarray(arrays["vertices"], dtype=np.float32)
    faces = np.ascontiguousarray(arrays["faces"], dtype=np.int32)
    colors = np.ascontiguousarray(arrays["colors"], dtype=np.uint8)
    uvs = arrays.get("uvs")
    n = len(vertices)
    problems = []
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        problems.append(f"vertices has shape {vertices.shape}, expected [N, 3]")
    if faces.ndim != 2 or faces.shape[1] != 3:
        problems.append(f"faces has shape {faces.shape}, expected [M, 3]")
    elif faces.size and (faces.min() < 0 or faces.max() >= n):
        problems.append("faces index vertices that do not exist")
    if colors.shape != (n, 4):
        problems.append(f"colors has shape {colors.shape}, expected [{n}, 4]")
    if uvs is not None:
        uvs = np.ascontiguousarray(uvs, dtype=np.float32)
        if uvs.shape != (n, 2):
            problems.append(f"uvs has shape {uvs.shape}, expected [{n}, 2]")
    if problems:
        raise BackendError(f"The result file {path} is malformed: {'; '.join(problems)}.")
    return MeshArrays(vertices=vertices, faces=faces, colors=colors, uvs=uvs)


# ---------------------------------------------------------------------------------------------------------
# The client


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_problem(token: str) -> str | None:
    """Why the backend would refuse `token` (words following "the token"), or None. The backend accepts
    printable ASCII without spaces only: clients disagree on how to send anything else in a header."""
    bad = sorted({c for c in token if not 0x21 <= ord(c) <= 0x7E})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:3])
        return f"may only hold printable ASCII characters without spaces (it has {shown})"
    return None


class _Deadline:
    """The end of one call, whatever phase it is in. Each socket operation waits at most until then, and
    a read still blocked when it passes is ended by shutting the socket down: a server that drips one
    byte a second would otherwise hold a call for as long as it likes, every read within its timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(0.001, self.end - time.monotonic())

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                self._shut()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shut()

    def _shut(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()
        self._deadline.watch(self.sock)


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTPConnection, deadline=self._deadline), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_WatchedHTTPSConnection, deadline=self._deadline)
        return self.do_open(connection, req)  # the default TLS context: certificates are verified


class BackendClient:
    """Blocking JSON calls to HTTP API v1; each call ends by its deadline and raises only BackendError."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str = "",
        timeout: float = STATUS_TIMEOUT_S,
        download_timeout: float = DOWNLOAD_TIMEOUT_S,
    ) -> None:
        url = (url or DEFAULT_URL).strip().rstrip("/")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"The backend URL {url!r} is not valid: use e.g. {DEFAULT_URL}")
        token = token.strip()
        if problem := token_problem(token):
            raise BackendError(f"The token in the add-on preferences {problem}; use the backend's token.")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.token = token
        self.timeout = timeout
        self.download_timeout = download_timeout

    @property
    def is_local(self) -> bool:
        return _is_loopback(self.host)

    # -- API -------------------------------------------------------------------------------------------
    def health(self) -> Health:
        return Health.from_json(self._json("GET", "/v1/health"))

    def submit(self, request: GenerationRequest) -> JobStatus:
        """Queue a job; returns its first status (id and state)."""
        data = self._json("POST", "/v1/jobs", request.to_json())
        if request.steps:
            data.setdefault("steps", request.steps)
        return JobStatus.from_json(data)

    def job(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(self._json("GET", f"/v1/jobs/{_quote(job_id)}"))

    def jobs(self) -> list[JobStatus]:
        listed = self._json("GET", "/v1/jobs").get("jobs", [])
        if not isinstance(listed, list):
            raise _malformed("job list", "'jobs' is not a list")
        return [JobStatus.from_json(j) for j in listed]

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(self._json("POST", f"/v1/jobs/{_quote(job_id)}/cancel", {}))

    def delete(self, job_id: str) -> None:
        with self._call(self.timeout) as deadline:
            self._request("DELETE", f"/v1/jobs/{_quote(job_id)}", None, deadline).close()

    def download(self, job_id: str, name: str, dest: Path | str, *, quick: bool = False) -> Path:
        """Fetch an artifact (`mesh.npz`, `texture.png`, ...) into `dest`, replacing it atomically.

        Streamed to the file, at most MAX_DOWNLOAD_BYTES; `quick` uses the status deadline: for small
        files fetched from a UI timer (previews).
        """
        if name not in DOWNLOADS:
            raise ValueError(f"unknown artifact {name!r}")
        dest = Path(dest)
        path = f"/v1/jobs/{_quote(job_id)}/{name}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except OSError as exc:
            raise _save_error(dest, exc) from None
        try:
            with (
                os.fdopen(fd, "wb") as out,
                self._call(self.timeout if quick else self.download_timeout) as deadline,
                self._request("GET", path, None, deadline) as response,
            ):
                self._check_length(response, MAX_DOWNLOAD_BYTES, path)
                received = 0
                while chunk := self._read(response, 1 << 20, deadline):
                    received += len(chunk)
                    if received > MAX_DOWNLOAD_BYTES:
                        raise self._too_large(path, MAX_DOWNLOAD_BYTES)
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise _save_error(dest, exc) from None
                if deadline.expired:
                    raise self._timed_out(deadline)
            os.replace(tmp, dest)
        except OSError as exc:  # closing or renaming the file
            Path(tmp).unlink(missing_ok=True)
            raise _save_error(dest, exc) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    # -- plumbing --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _call(self, seconds: float) -> Iterator[_Deadline]:
        deadline = _Deadline(seconds)
        try:
            yield deadline
        finally:
            deadline.cancel()

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._call(self.timeout) as deadline, self._request(method, path, body, deadline) as response:
            self._check_length(response, MAX_JSON_BYTES, path)
            chunks: list[bytes] = []
            received = 0
            while chunk := self._read(response, 1 << 16, deadline):
                received += len(chunk)
                if received > MAX_JSON_BYTES:
                    raise self._too_large(path, MAX_JSON_BYTES)
                chunks.append(chunk)
            raw = b"".join(chunks)
        if deadline.expired:  # the answer was cut off at the deadline
            raise self._timed_out(deadline)
        try:
            data = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise self._not_ours(exc) from None
        if not isinstance(data, dict):
            raise BackendError(f"The server at {self.url} sent an unexpected answer to {method} {path}.")
        return data

    def _opener(self, deadline: _Deadline) -> urllib.request.OpenerDirector:
        handlers: list[urllib.request.BaseHandler] = [
            _WatchedHTTPHandler(deadline),
            _WatchedHTTPSHandler(deadline),
        ]
        if self.is_local:  # a proxy configured for the web must not intercept calls to this machine
            handlers.append(urllib.request.ProxyHandler({}))
        return urllib.request.build_opener(*handlers)

    def _request(self, method: str, path: str, body: dict[str, Any] | None, deadline: _Deadline) -> Any:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=payload, headers=headers, method=method)
        try:
            return self._opener(deadline).open(req, timeout=deadline.remaining())
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, method, path, deadline) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._connection_error(exc, deadline) from None
        except http.client.HTTPException as exc:
            raise self._failure(exc, deadline) from None
        except ValueError as exc:  # e.g. a malformed URL that urlsplit still accepted
            raise BackendError(f"The backend URL {self.url!r} is not valid ({exc}).") from None

    def _read(self, response: Any, size: int, deadline: _Deadline) -> bytes:
        try:
            return bytes(response.read(size))
        except (OSError, urllib.error.URLError) as exc:
            raise self._connection_error(exc, deadline) from None
        except (http.client.HTTPException, ValueError) as exc:
            raise self._failure(exc, deadline) from None

    def _check_length(self, response: Any, limit: int, path: str) -> None:
        declared = str(response.headers.get("Content-Length") or "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(path, limit)

    def _too_large(self, path: str, limit: int) -> BackendError:
        return BackendError(
            f"The server at {self.url} sent more than {limit >> 20} MiB for {path}; is it a Dreamsmith "
            "backend? Check the backend URL in the add-on preferences."
        )

    def _failure(self, exc: BaseException, deadline: _Deadline) -> BackendError:
        if deadline.expired:
            return self._timed_out(deadline)
        return self._not_ours(exc)

    def _not_ours(self, exc: BaseException) -> BackendError:
        return BackendError(
            f"The server at {self.url} did not answer like a Dreamsmith backend ({type(exc).__name__}); is "
            "another program using that port? Check the backend URL in the add-on preferences."
        )

    def _timed_out(self, deadline: _Deadline) -> BackendError:
        return BackendError(
            f"The Dreamsmith backend at {self.url} did not answer within {deadline.seconds:g} s; it may be "
            "busy or stuck. Try again, or restart it from the add-on preferences."
        )

    def _connection_error(self, exc: BaseException, deadline: _Deadline) -> BackendError:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if deadline.expired or isinstance(reason, (socket.timeout, TimeoutError)):
            return self._timed_out(deadline)
        return BackendError(
            f"Dreamsmith backend is not reachable at {self.url}: {START_HINT}", unreachable=True
        )

    def _http_error(
        self, exc: urllib.error.HTTPError, method: str, path: str, deadline: _Deadline
    ) -> BackendError:
        code = field_name = None
        message = ""
        try:
            raw = exc.read(MAX_ERROR_BYTES)
            err = json.loads(raw.decode("utf-8")).get("error", {})
            code, message, field_name = err.get("code"), str(err.get("message", "")), err.get("field")
        except Exception:  # a body that is not our JSON error: fall back to the HTTP reason
            message = "" if deadline.expired else str(exc.reason)
        finally:
            exc.close()
        if not isinstance(code, str):
            code = None
        if not isinstance(field_name, str):
            field_name = None
        status = exc.code
        if status == 401:
            text = (
                f"The backend at {self.url} needs a token: set the same token in the add-on preferences "
                "as the one the backend was started with."
            )
        elif status == 404 and path.startswith("/v1/jobs/"):
            text = f"The backend does not have that job or file any more ({message or 'not found'})."
        elif status == 404:
            text = f"The server at {self.url} is not a Dreamsmith backend (no {path}); check the URL."
        elif status in (400, 422):
            where = f" '{field_name}'" if field_name else ""
            text = f"The backend refused the settings{where}: {message}. Fix it in the Dreamsmith panel."
        elif status == 409:
            text = f"The backend cannot do that now: {message}."
        elif status == 413:
            text = f"The request is too large for the backend: {message}."
        else:
            text = f"The backend failed on {method} {path} (HTTP {status}): {message or 'no details'}."
        return BackendError(text, status=status, code=code, field=field_name)


def _save_error(dest: Path, exc: OSError) -> BackendError:
    return BackendError(f"Could not save the download to {dest}: {exc.strerror or exc}; check the disk.")


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")
