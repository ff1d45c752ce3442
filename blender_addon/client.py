"""The HTTP client for the Dreamsmith backend: the only file in the add-on that knows the wire.

Everything that crosses the boundary is plain data (dataclasses below); every failure becomes one
`BackendError` whose message says what happened and what to do next. Timeouts are short for status
calls so that a stuck or absent backend never freezes Blender, and longer for result downloads.
Standard library only (urllib), so the add-on needs nothing installed into Blender's Python.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_URL = "http://127.0.0.1:8765"
# Status calls run on Blender's UI thread (one per timer tick): keep them short.
STATUS_TIMEOUT_S = 3.0
# Downloads of results are larger; the timeout applies to each socket read, not to the whole file.
DOWNLOAD_TIMEOUT_S = 30.0

TEXTURE_MODES = ("vertex", "uv")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")

PREVIEW_PNG = "preview.png"
MESH_NPZ = "mesh.npz"
MESH_GLB = "mesh.glb"
TEXTURE_PNG = "texture.png"
ARTIFACTS = (PREVIEW_PNG, MESH_NPZ, MESH_GLB, TEXTURE_PNG)

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


# ---------------------------------------------------------------------------------------------------------
# Plain data crossing the boundary


@dataclass
class MethodChoice:
    """One score distillation method the backend offers (GET /v1/health's `method_details`)."""

    name: str
    title: str
    description: str


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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Health:
        models = data.get("models") or {}
        return cls(
            version=str(data.get("version", "?")),
            device=str(data.get("device", "?")),
            methods=[str(m) for m in data.get("methods", [])],
            method_details=[
                MethodChoice(str(m.get("name", "")), str(m.get("title", "")), str(m.get("description", "")))
                for m in data.get("method_details") or []
                if isinstance(m, dict) and m.get("name")
            ],
            default_method=str(data.get("default_method", "")),
            default_model=str(models.get("default", "")),
            loaded_models=[str(m) for m in models.get("loaded", [])],
            queue=int(data.get("queue", 0)),
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
    artifacts: list[str] = field(default_factory=list)
    request: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    finished_at: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobStatus:
        if not isinstance(data, dict) or "id" not in data or "state" not in data:
            raise BackendError(
                "The backend sent a job status without an id or state; is it a Dreamsmith backend?"
            )
        return cls(
            id=str(data["id"]),
            state=str(data["state"]),
            phase=data.get("phase"),
            step=int(data.get("step") or 0),
            steps=int(data.get("steps") or 0),
            t=data.get("t"),
            loss=data.get("loss"),
            elapsed_s=float(data.get("elapsed_s") or 0.0),
            eta_s=data.get("eta_s"),
            error=data.get("error"),
            artifacts=[str(a) for a in data.get("artifacts") or []],
            request=dict(data.get("request") or {}),
            created_at=float(data.get("created_at") or 0.0),
            finished_at=data.get("finished_at"),
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


@dataclass
class GenerationRequest:
    """One `POST /v1/jobs` body.

    "Backend default" (the field is left out of the body, so the backend's tuned value applies):
    `steps` 0, `render_size` 0, `guidance_scale` 0 or None (the method's default), an empty `model`
    (the demo prior).
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
    camera: CameraRanges = field(default_factory=CameraRanges)
    export: ExportOptions = field(default_factory=ExportOptions)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "method": self.method,
            "seed": int(self.seed),
            "preview_every": int(self.preview_every),
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
            render_size=int(data.get("render_size") or 0),
            preview_every=int(data.get("preview_every", 50)),
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


def read_mesh_npz(path: Path | str) -> MeshArrays:
    """Load and check a result file; a malformed file raises BackendError naming the problem."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise BackendError(f"The result file {path} could not be read ({exc}); generate again.") from exc
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


class BackendClient:
    """Blocking JSON calls to HTTP API v1; each call is bounded by a timeout and raises only BackendError."""

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
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.token = token.strip()
        self.timeout = timeout
        self.download_timeout = download_timeout
        # A proxy configured for the web must not intercept calls to a backend on this machine.
        handlers: list[urllib.request.BaseHandler] = []
        if _is_loopback(self.host):
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

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
        return [JobStatus.from_json(j) for j in self._json("GET", "/v1/jobs").get("jobs", [])]

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.from_json(self._json("POST", f"/v1/jobs/{_quote(job_id)}/cancel", {}))

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{_quote(job_id)}", None, self.timeout).close()

    def download(self, job_id: str, name: str, dest: Path | str, *, quick: bool = False) -> Path:
        """Fetch an artifact (`mesh.npz`, `texture.png`, ...) into `dest`, replacing it atomically.

        `quick` uses the status timeout: for small files fetched from a UI timer (previews).
        """
        if name not in ARTIFACTS:
            raise ValueError(f"unknown artifact {name!r}")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        timeout = self.timeout if quick else self.download_timeout
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                response = self._request("GET", f"/v1/jobs/{_quote(job_id)}/{name}", None, timeout)
                with response:
                    while chunk := self._read(response, 1 << 20, timeout):
                        out.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    # -- plumbing --------------------------------------------------------------------------------------
    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._request(method, path, body, self.timeout) as response:
            raw = self._read(response, -1, self.timeout)
        try:
            data = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._not_ours(exc) from exc
        if not isinstance(data, dict):
            raise BackendError(f"The server at {self.url} sent an unexpected answer to {method} {path}.")
        return data

    def _request(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=payload, headers=headers, method=method)
        try:
            return self._opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, method, path) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._connection_error(exc, timeout) from None
        except http.client.HTTPException as exc:
            raise self._not_ours(exc) from None
        except ValueError as exc:  # e.g. a malformed URL that urlsplit still accepted
            raise BackendError(f"The backend URL {self.url!r} is not valid ({exc}).") from None

    def _read(self, response: Any, size: int, timeout: float) -> bytes:
        try:
            return bytes(response.read(size))
        except (OSError, urllib.error.URLError) as exc:
            raise self._connection_error(exc, timeout) from None
        except http.client.HTTPException as exc:
            raise self._not_ours(exc) from None

    def _not_ours(self, exc: BaseException) -> BackendError:
        return BackendError(
            f"The server at {self.url} did not answer like a Dreamsmith backend ({type(exc).__name__}); is "
            "another program using that port? Check the backend URL in the add-on preferences."
        )

    def _connection_error(self, exc: BaseException, timeout: float) -> BackendError:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return BackendError(
                f"The Dreamsmith backend at {self.url} did not answer within {timeout:g} s; it may be busy "
                "or stuck. Try again, or restart it from the add-on preferences."
            )
        return BackendError(
            f"Dreamsmith backend is not reachable at {self.url}: {START_HINT}", unreachable=True
        )

    def _http_error(self, exc: urllib.error.HTTPError, method: str, path: str) -> BackendError:
        code = field_name = None
        message = ""
        try:
            raw = exc.read()
            err = json.loads(raw.decode("utf-8")).get("error", {})
            code, message, field_name = err.get("code"), str(err.get("message", "")), err.get("field")
        except Exception:  # a body that is not our JSON error: fall back to the HTTP reason
            message = str(exc.reason)
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


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")
