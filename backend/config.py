"""Generation settings: one dataclass tree, its defaults, and the validation every entry point shares.

The CLI, the HTTP service and the add-on's requests all end up as a `GenerationConfig`; the ranges
below are the single source of truth for what is accepted (the service's schema reads them too).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from backend.errors import InvalidConfig

METHODS = ("tp-sds", "sds", "asd", "tp-asd")
DEFAULT_METHOD = "tp-sds"
# Methods are pairs (schedule, gradient rule); see DESIGN.md "Gradient rule".
METHOD_PARTS: dict[str, tuple[str, str]] = {
    "sds": ("uniform", "sds"),
    "tp-sds": ("prioritized", "sds"),
    "asd": ("uniform", "asd"),
    "tp-asd": ("prioritized", "asd"),
}
# Classifier-free guidance scale per gradient rule: DreamFusion's 100 for SDS, ScaleDreamer's 7.5 for ASD.
DEFAULT_GUIDANCE = {"sds": 100.0, "asd": 7.5}
DEFAULT_T_MAX = 0.98  # for models that recommend none (DESIGN.md)
TEXTURE_MODES = ("vertex", "uv")
BACKGROUNDS = ("learned", "random", "white")
DEVICES = ("auto", "cpu", "cuda")

# name -> (min, max), inclusive; shared with the HTTP schema.
LIMITS: dict[str, tuple[float, float]] = {
    "prompt_chars": (1, 500),
    "negative_prompt_chars": (0, 500),
    "steps": (1, 20000),
    "seed": (0, 2**31 - 1),
    "guidance_scale": (0.0, 1000.0),
    "render_size": (16, 512),
    "preview_every": (0, 100000),
    "batch_size": (1, 16),
    "camera.elevation_deg": (-89.0, 89.0),
    "camera.azimuth_deg": (-360.0, 360.0),
    "camera.distance": (0.5, 10.0),
    "camera.fov_deg": (5.0, 120.0),
    "camera.front_azimuth_deg": (-360.0, 360.0),
    "export.mesh_resolution": (16, 512),
    "export.texture_size": (64, 4096),
    "export.target_faces": (100, 2_000_000),
    "export.smoothing": (0.0, 4.0),
}


@dataclass
class CameraConfig:
    """Ranges the training cameras are drawn from. Z is up; azimuth 0 looks from -Y (Blender's front)."""

    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    distance: tuple[float, float] = (1.8, 2.2)
    fov_deg: tuple[float, float] = (40.0, 50.0)
    # Azimuth of the object's front; view-dependent prompts are chosen relative to it.
    front_azimuth_deg: float = 0.0


@dataclass
class ExportConfig:
    mesh_resolution: int = 128
    texture: str = "vertex"
    texture_size: int = 1024
    target_faces: int = 50000
    # Gaussian smoothing of the density grid before marching cubes, sigma in grid cells (0: none). One
    # cell takes the pitting out of score-distilled surfaces and leaves the shape (its IoU) as it was.
    smoothing: float = 1.0
    # Density level for marching cubes; None picks it automatically from the grid.
    threshold: float | None = None


@dataclass
class GenerationConfig:
    prompt: str
    negative_prompt: str = ""
    method: str = DEFAULT_METHOD
    # Defaults are tuned for the built-in demo prior (32 px) on a CPU; Stable Diffusion wants render_size 64
    # and a few thousand steps.
    steps: int = 250
    seed: int = 0
    # None or 0 -> the method's default (DEFAULT_GUIDANCE).
    guidance_scale: float | None = None
    # Local diffusers folder or hub id; None -> the built-in demo prior.
    model: str | None = None
    render_size: int = 32
    batch_size: int = 1
    preview_every: int = 50
    device: str = "auto"
    camera: CameraConfig = field(default_factory=CameraConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    # Timesteps, as fractions of the model's T (DESIGN.md: t_min = 0.02 T, t_max = 0.98 T). t_max None: the
    # model's own recommendation (`dreamsmith.json` beside its model_index.json; the demo prior's is 0.6),
    # else 0.98.
    t_min: float = 0.02
    t_max: float | None = None
    # Uniform schedule window annealing (ScaleDreamer slides [500, 980] to [20, 500]); None = fixed.
    anneal_window: tuple[float, float, float, float] | None = None
    # DreamTime prior weight W_p parameters (in timesteps) and whether W_d multiplies it.
    tp_m1: float = 800.0
    tp_m2: float = 500.0
    tp_s1: float = 300.0
    tp_s2: float = 100.0
    tp_use_wd: bool = True
    # ASD: dt ~ U[0, eta (t - t_min)].
    asd_eta: float = 0.1
    grad_clip: float | None = None

    # Adam learning rates per part of the field.
    lr_grid: float = 1e-2
    lr_mlp: float = 1e-3
    lr_background: float = 1e-3
    # Regularizer weights.
    lambda_orientation: float = 1e-2
    lambda_sparsity: float = 1e-3
    # Shading mix (albedo, lambertian, textureless) once warm-up is over, as in DreamFusion.
    shading_warmup_steps: int = 100
    shading_probs: tuple[float, float, float] = (0.5, 0.3, 0.2)
    # The demo prior was trained on white backgrounds; "learned" (DreamFusion) suits Stable Diffusion too.
    background: str = "white"
    samples_per_ray: int = 32

    @property
    def schedule_kind(self) -> str:
        return METHOD_PARTS[self.method][0]

    @property
    def gradient_rule(self) -> str:
        return METHOD_PARTS[self.method][1]

    @property
    def effective_guidance_scale(self) -> float:
        if self.guidance_scale:
            return float(self.guidance_scale)
        return DEFAULT_GUIDANCE[self.gradient_rule]

    def validate(self) -> GenerationConfig:
        """Raise InvalidConfig naming the first bad field; return self so calls chain."""
        validate_config(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_range(name: str, value: Any, kind: type) -> None:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidConfig(name, f"must be an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise InvalidConfig(name, f"must be a number, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise InvalidConfig(name, f"must be a finite number, got {value!r}")
    lo, hi = LIMITS[name]
    if not lo <= value <= hi:
        raise InvalidConfig(name, f"must be between {lo:g} and {hi:g}, got {value!r}")


def _check_pair(name: str, value: Any) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InvalidConfig(name, f"must be a [min, max] pair, got {value!r}")
    for v in value:
        _check_range(name, v, float)
    if value[0] > value[1]:
        raise InvalidConfig(name, f"min must not exceed max, got {list(value)}")


def validate_config(cfg: GenerationConfig) -> None:
    if not isinstance(cfg.prompt, str) or not cfg.prompt.strip():
        raise InvalidConfig("prompt", 'must be a non-empty text, e.g. "a red cube"')
    if len(cfg.prompt) > LIMITS["prompt_chars"][1]:
        raise InvalidConfig("prompt", f"must be at most {LIMITS['prompt_chars'][1]:g} characters")
    if not isinstance(cfg.negative_prompt, str):
        raise InvalidConfig("negative_prompt", "must be a text")
    if len(cfg.negative_prompt) > LIMITS["negative_prompt_chars"][1]:
        raise InvalidConfig("negative_prompt", "must be at most 500 characters")
    if cfg.method not in METHODS:
        raise InvalidConfig("method", f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    _check_range("steps", cfg.steps, int)
    _check_range("seed", cfg.seed, int)
    if cfg.guidance_scale is not None:
        _check_range("guidance_scale", cfg.guidance_scale, float)
    if cfg.model is not None and (not isinstance(cfg.model, str) or not cfg.model.strip()):
        raise InvalidConfig("model", "must be a local folder or a hub id (omit it for the demo prior)")
    _check_range("render_size", cfg.render_size, int)
    _check_range("batch_size", cfg.batch_size, int)
    _check_range("preview_every", cfg.preview_every, int)
    if cfg.device not in DEVICES:
        raise InvalidConfig("device", f"must be one of {', '.join(DEVICES)}, got {cfg.device!r}")
    if cfg.background not in BACKGROUNDS:
        raise InvalidConfig("background", f"must be one of {', '.join(BACKGROUNDS)}")
    cam = cfg.camera
    for name in ("elevation_deg", "azimuth_deg", "distance", "fov_deg"):
        _check_pair(f"camera.{name}", getattr(cam, name))
    _check_range("camera.front_azimuth_deg", cam.front_azimuth_deg, float)
    exp = cfg.export
    _check_range("export.mesh_resolution", exp.mesh_resolution, int)
    if exp.texture not in TEXTURE_MODES:
        raise InvalidConfig("export.texture", f'must be "vertex" or "uv", got {exp.texture!r}')
    _check_range("export.texture_size", exp.texture_size, int)
    _check_range("export.target_faces", exp.target_faces, int)
    _check_range("export.smoothing", exp.smoothing, float)
    if exp.threshold is not None and (
        isinstance(exp.threshold, bool)
        or not isinstance(exp.threshold, (int, float))
        or not math.isfinite(exp.threshold)
    ):
        raise InvalidConfig("export.threshold", "must be a number or omitted for automatic")
    t_max = 1.0 if cfg.t_max is None else cfg.t_max
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (cfg.t_min, t_max)) or not (
        0.0 <= cfg.t_min < t_max <= 1.0
    ):
        raise InvalidConfig("t_min", "need 0 <= t_min < t_max <= 1 (fractions of the model's T)")


def config_from_dict(data: dict[str, Any]) -> GenerationConfig:
    """Build a config from plain data (JSON request, saved job); unknown keys are refused by name."""
    if not isinstance(data, dict):
        raise InvalidConfig("request", "must be a JSON object")
    data = dict(data)
    nested: dict[str, Any] = {}
    for key, cls in (("camera", CameraConfig), ("export", ExportConfig)):
        sub = data.pop(key, None)
        if sub is None:
            nested[key] = cls()
            continue
        if not isinstance(sub, dict):
            raise InvalidConfig(key, "must be an object")
        names = {f.name for f in dataclasses.fields(cls)}
        for k in sub:
            if k not in names:
                raise InvalidConfig(f"{key}.{k}", "unknown field")
        sub = {k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()}
        nested[key] = cls(**sub)
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    for k in data:
        if k not in names:
            raise InvalidConfig(k, "unknown field")
    if "prompt" not in data:
        raise InvalidConfig("prompt", "is required")
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return GenerationConfig(**data, **nested).validate()
