"""Wire shapes of HTTP API v1 (DESIGN.md): the generation request, job status, health and errors.

The request models carry the ranges of `backend.config.LIMITS`, so the OpenAPI schema a client reads is
the same rule the engine enforces. Only the user-facing fields are accepted; the engine's tuning fields
(learning rates, schedule constants, ...) are not part of the API.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from backend.config import (
    DEFAULT_METHOD,
    LIMITS,
    METHODS,
    TEXTURE_MODES,
    CameraConfig,
    ExportConfig,
    GenerationConfig,
)

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
# The only files a client can ask for; any other name is a 404, so no path ever comes from the URL.
ARTIFACTS = ("preview.png", "mesh.glb", "mesh.npz", "texture.png")
ARTIFACT_MEDIA_TYPES = {
    "preview.png": "image/png",
    "mesh.glb": "model/gltf-binary",
    "mesh.npz": "application/octet-stream",
    "texture.png": "image/png",
}
MAX_MODEL_CHARS = 1024

_DEFAULTS = GenerationConfig(prompt="-")
_CAMERA = CameraConfig()
_EXPORT = ExportConfig()


def _integral(value: object) -> object:
    # JSON Schema's "integer" includes 5.0; strings and booleans stay errors.
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]


def _int(name: str, default: int, description: str) -> object:
    lo, hi = LIMITS[name]
    return Field(default=default, ge=int(lo), le=int(hi), description=description)


def _float(name: str, default: float | None, description: str) -> object:
    lo, hi = LIMITS[name]
    return Field(default=default, ge=lo, le=hi, allow_inf_nan=False, description=description)


def _range(name: str) -> object:
    """A [min, max] pair of finite numbers inside LIMITS[name] (min <= max is checked by the config)."""
    lo, hi = LIMITS[name]
    bounded = Annotated[float, Field(ge=lo, le=hi, allow_inf_nan=False)]
    # A list, not a tuple: strict validation of the parsed JSON refuses a list where a tuple is declared.
    return Annotated[list[bounded], Field(min_length=2, max_length=2)]  # type: ignore[valid-type]


class _Strict(BaseModel):
    # strict: "5" is not a number and true is not an integer; forbid: unknown fields are named in the error.
    # python-re: the schema's patterns mean what Python's str methods mean (the config uses str.strip()).
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")


class CameraRequest(_Strict):
    elevation_deg: _range("camera.elevation_deg") = Field(  # type: ignore[valid-type]
        default=list(_CAMERA.elevation_deg), description="[min, max] camera elevation in degrees"
    )
    azimuth_deg: _range("camera.azimuth_deg") = Field(  # type: ignore[valid-type]
        default=list(_CAMERA.azimuth_deg), description="[min, max] azimuth relative to the front, degrees"
    )
    distance: _range("camera.distance") = Field(  # type: ignore[valid-type]
        default=list(_CAMERA.distance), description="[min, max] camera distance from the origin"
    )
    fov_deg: _range("camera.fov_deg") = Field(  # type: ignore[valid-type]
        default=list(_CAMERA.fov_deg), description="[min, max] vertical field of view in degrees"
    )
    front_azimuth_deg: float = _float(
        "camera.front_azimuth_deg", _CAMERA.front_azimuth_deg, "azimuth of the object's front (0 = -Y)"
    )  # type: ignore[assignment]


class ExportRequest(_Strict):
    mesh_resolution: JsonInt = _int(
        "export.mesh_resolution", _EXPORT.mesh_resolution, "marching-cubes grid size per axis"
    )  # type: ignore[assignment]
    texture: Literal[TEXTURE_MODES] = Field(  # type: ignore[valid-type]
        default=_EXPORT.texture, description="per-vertex colours or a UV-unwrapped texture image"
    )
    texture_size: JsonInt = _int("export.texture_size", _EXPORT.texture_size, "texture image size (uv)")  # type: ignore[assignment]
    target_faces: JsonInt = _int(
        "export.target_faces", _EXPORT.target_faces, "decimate to about this many faces"
    )  # type: ignore[assignment]
    smoothing: float = _float(
        "export.smoothing", _EXPORT.smoothing, "smooth the density before marching cubes (grid cells; 0: off)"
    )  # type: ignore[assignment]


class JobRequest(_Strict):
    """POST /v1/jobs body. Defaults are the engine's; omitted `model` is the built-in demo prior."""

    prompt: str = Field(
        min_length=int(LIMITS["prompt_chars"][0]),
        max_length=int(LIMITS["prompt_chars"][1]),
        pattern=r"\S",  # not only whitespace
        description='what to make, e.g. "a red cube"',
    )
    negative_prompt: str = Field(
        default=_DEFAULTS.negative_prompt, max_length=int(LIMITS["negative_prompt_chars"][1])
    )
    method: Literal[METHODS] = Field(default=DEFAULT_METHOD)  # type: ignore[valid-type]
    steps: JsonInt = _int("steps", _DEFAULTS.steps, "optimization steps")  # type: ignore[assignment]
    seed: JsonInt = _int("seed", _DEFAULTS.seed, "random seed; the same seed gives the same result on CPU")  # type: ignore[assignment]
    guidance_scale: float | None = _float(
        "guidance_scale", None, "classifier-free guidance scale; null or 0 = the method's default"
    )  # type: ignore[assignment]
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODEL_CHARS,
        description="local diffusers folder or hub id; null = the built-in demo prior",
    )
    render_size: JsonInt = _int("render_size", _DEFAULTS.render_size, "training render size in pixels")  # type: ignore[assignment]
    preview_every: JsonInt = _int(
        "preview_every", _DEFAULTS.preview_every, "steps between previews; 0 = none"
    )  # type: ignore[assignment]
    camera: CameraRequest = Field(default_factory=CameraRequest)
    export: ExportRequest = Field(default_factory=ExportRequest)

    @field_validator("model")
    @classmethod
    def _printable_model(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value)):
            raise ValueError("must be a local folder or a hub id without control characters")
        return value


class JobCreated(BaseModel):
    id: str
    state: Literal[JOB_STATES]  # type: ignore[valid-type]


class JobStatus(BaseModel):
    id: str
    state: Literal[JOB_STATES]  # type: ignore[valid-type]
    phase: str | None
    step: int
    steps: int
    t: int | None
    loss: float | None
    elapsed_s: float
    eta_s: float | None
    error: str | None
    artifacts: list[Literal[ARTIFACTS]]  # type: ignore[valid-type]
    request: dict
    created_at: float
    finished_at: float | None


class JobList(BaseModel):
    jobs: list[JobStatus]


class ModelsInfo(BaseModel):
    default: str
    loaded: list[str]


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    device: str
    methods: list[str]
    default_method: str
    models: ModelsInfo
    queue: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message", "field"}}` with a 4xx status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}
