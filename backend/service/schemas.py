"""Wire shapes of HTTP API v1 (docs/design.md, "HTTP API"): the generation request, job status, health, errors.

The request models are derived from the settings table (`backend.config`, fields declared with
`setting(..., api=True)`): their names, types, defaults, ranges, choices and descriptions are the ones the
engine validates, so the OpenAPI schema a client reads is the engine's own rule. The engine's tuning
settings are not part of the API.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, field_validator

from backend.config import GenerationConfig
from backend.settings import Setting, nested_fields, settings_of

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
# The only files a client can ask for; any other name is a 404, so no path ever comes from the URL.
ARTIFACTS = ("preview.png", "mesh.glb", "mesh.npz", "texture.png")
ARTIFACT_MEDIA_TYPES = {
    "preview.png": "image/png",
    "mesh.glb": "model/gltf-binary",
    "mesh.npz": "application/octet-stream",
    "texture.png": "image/png",
}


# Texts with a stricter rule than "not only whitespace", stated in the schema (JobRequest words the error).
PATTERNS = {"model": r"^(?![^\n]*[\x00-\x1f\x7f])[^\n]*\S"}  # a folder or hub id: no control characters


def _integral(value: object) -> object:
    # JSON Schema's "integer" includes 5.0; strings and booleans stay errors.
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]


class _Strict(BaseModel):
    # strict: "5" is not a number and true is not an integer; forbid: unknown fields are named in the error.
    # python-re: the schema's patterns mean what Python's str methods mean (the config uses str.strip()).
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")


def _wire_type(s: Setting) -> tuple[Any, dict[str, Any]]:
    """The pydantic annotation of one setting (without None) and the constraints of its Field."""
    spec, tp = s.spec, s.base_type
    numbers = {k: v for k, v in (("ge", spec.lo), ("le", spec.hi)) if v is not None}
    if tp is int:
        return JsonInt, {k: int(v) for k, v in numbers.items()}
    if tp is float:
        return float, {"allow_inf_nan": False, **numbers}
    if tp is bool:
        return bool, {}
    if tp is str:
        allowed = spec.allowed()
        if allowed is not None:
            return Literal[allowed], {}
        text: dict[str, Any] = {"max_length": spec.max_chars}
        if spec.min_chars:
            text |= {
                "min_length": spec.min_chars,
                "pattern": PATTERNS.get(s.key, r"\S"),
            }  # not only whitespace
        return str, {k: v for k, v in text.items() if v is not None}
    if typing.get_origin(tp) is tuple:
        n = len(typing.get_args(tp))
        item = Annotated[float, Field(allow_inf_nan=False, **numbers)]
        # A list, not a tuple: strict validation of the parsed JSON refuses a list where a tuple is declared.
        return list[item], {"min_length": n, "max_length": n}
    raise TypeError(f"setting {s.key} has no wire type")


def _field(s: Setting) -> tuple[Any, Any]:
    tp, constraints = _wire_type(s)
    if s.required:  # the prompt
        return tp, Field(description=s.spec.help, **constraints)
    default = list(s.default) if isinstance(s.default, tuple) else s.default
    return (tp | None if s.optional else tp), Field(default=default, description=s.spec.help, **constraints)


def request_model(cls: type, name: str) -> type[BaseModel]:
    """A strict pydantic model of the `api` settings of a settings dataclass (nested groups included)."""
    fields: dict[str, Any] = {}
    nested = nested_fields(cls)
    for s in settings_of(cls):
        key = s.key
        head = key.split(".", 1)[0]
        if head in nested or not s.spec.api:
            continue
        fields[key] = _field(s)
    for group, sub in nested.items():
        model = request_model(sub, group.capitalize() + "Request")
        if model.model_fields:
            fields[group] = (model, Field(default_factory=model))
    return create_model(name, __base__=_Strict, **fields)


class JobRequest(request_model(GenerationConfig, "_JobRequestFields")):  # type: ignore[misc]
    """POST /v1/jobs body. Defaults are the engine's; omitted `model` is the built-in demo prior."""

    @field_validator("model", mode="before", check_fields=False)
    @classmethod
    def _printable_model(cls, value: object) -> object:
        if isinstance(value, str) and (not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value)):
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
    warnings: list[str] = Field(
        default_factory=list,
        description="why the result may not match the prompt (e.g. words a generator never saw)",
    )
    artifacts: list[Literal[ARTIFACTS]]  # type: ignore[valid-type]
    request: dict[str, Any]
    created_at: float
    finished_at: float | None
    live_step: int | None = Field(
        default=None,
        description="step of the latest live mesh (GET /v1/jobs/{id}/live.npz) while the job runs; else null",
    )


class JobList(BaseModel):
    jobs: list[JobStatus]


class MethodInfo(BaseModel):
    name: str
    title: str
    description: str
    schedule: str
    rule: str
    guidance_scale: float


class ModelsInfo(BaseModel):
    default: str
    loaded: list[str]


class GeneratorSummary(BaseModel):
    name: str  # what a request's `generator` field takes
    prompts: int  # training prompts
    examples: list[str]
    vocabulary: list[str]  # the words it was trained on (others get a warning)
    method: str
    prior: str


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    device: str
    methods: list[str]
    method_details: list[MethodInfo]
    default_method: str
    models: ModelsInfo
    generators: list[GeneratorSummary] = Field(
        default_factory=list,
        description="built-in trained generators (instant results: a request's `generator`)",
    )
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

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}
