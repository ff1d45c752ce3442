"""Generation settings: one dataclass tree whose fields are the settings table (docs/design.md, "Settings").

Each field is declared once with `setting(default, help, range...)`; validation, the HTTP request schema
(`backend.service.schemas`) and the CLI (`backend.cli`) are derived from these declarations. Fields marked
`api=True` are what a client may send; the others are the engine's tuning knobs, validated the same way
and reachable from the CLI and the benchmarks with `--set KEY=VALUE`.

The method list comes from the engine's rule and schedule tables (`backend.engine.methods`), read lazily
so that importing this module stays light.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from backend.errors import InvalidConfig
from backend.settings import Setting, nested_fields, setting, settings_of, validate_settings

DEFAULT_METHOD = "tp-sds"
DEFAULT_T_MAX = 0.98  # for models that recommend none (docs/design.md, "Timestep schedules")
# What a recommendable setting is when neither the request nor the model sets it (guidance: the rule's).
ENGINE_DEFAULTS = {"t_max": DEFAULT_T_MAX, "lambda_depth_variance": 0.0}
TEXTURE_MODES = ("vertex", "uv")
AUTO_LEVELS = ("auto", "silhouette", "density")
DEVICES = ("auto", "cpu", "cuda")
MAX_PROMPT_CHARS = 500


def method_names() -> tuple[str, ...]:
    """Every method the engine offers (a timestep schedule paired with a gradient rule)."""
    from backend.engine.methods import METHODS

    return tuple(METHODS)


def geometry_kinds() -> tuple[str, ...]:
    from backend.engine.geometry import GEOMETRIES

    return tuple(GEOMETRIES)


def density_activations() -> tuple[str, ...]:
    from backend.engine.geometry.nerf import DENSITY_ACTIVATIONS

    return DENSITY_ACTIVATIONS


def background_kinds() -> tuple[str, ...]:
    from backend.engine.background import BACKGROUNDS

    return tuple(BACKGROUNDS)


@dataclass
class CameraConfig:
    """Ranges the training cameras are drawn from. Z is up; azimuth 0 looks from -Y (Blender's front)."""

    elevation_deg: tuple[float, float] = setting(
        (-10.0, 45.0), "[min, max] camera elevation in degrees", lo=-89.0, hi=89.0, ordered=True, api=True
    )
    azimuth_deg: tuple[float, float] = setting(
        (-180.0, 180.0),
        "[min, max] azimuth relative to the front, degrees",
        lo=-360.0,
        hi=360.0,
        ordered=True,
        api=True,
    )
    distance: tuple[float, float] = setting(
        (1.8, 2.2), "[min, max] camera distance from the origin", lo=0.5, hi=10.0, ordered=True, api=True
    )
    fov_deg: tuple[float, float] = setting(
        (40.0, 50.0), "[min, max] vertical field of view in degrees", lo=5.0, hi=120.0, ordered=True, api=True
    )
    # View-dependent prompts are chosen relative to this azimuth.
    front_azimuth_deg: float = setting(
        0.0, "azimuth of the object's front (0 = -Y)", lo=-360.0, hi=360.0, api=True
    )
    stratified_elevation: bool = setting(
        False,
        "place each step's elevation by a low-discrepancy sequence over the run instead of drawing it "
        "independently, so that every stretch of steps sees high and low views alike",
    )


@dataclass
class ExportConfig:
    mesh_resolution: int = setting(
        128, "marching-cubes grid size per axis", lo=16, hi=512, api=True, cli=True
    )
    texture: str = setting(
        "vertex",
        "per-vertex colours or a UV-unwrapped texture image",
        choices=TEXTURE_MODES,
        api=True,
        cli=True,
        cli_help="vertex: colours per vertex (fast, default); uv: unwrap and bake a texture image",
    )
    texture_size: int = setting(1024, "texture image size (uv)", lo=64, hi=4096, api=True, cli=True)
    target_faces: int = setting(
        50000, "decimate to about this many faces", lo=100, hi=2_000_000, api=True, cli=True
    )
    # One cell takes the pitting out of score-distilled surfaces and leaves the shape (its IoU) as it was.
    smoothing: float = setting(
        1.0,
        "smooth the density before marching cubes (grid cells; 0: off)",
        lo=0.0,
        hi=4.0,
        api=True,
        cli=True,
    )
    threshold: float | None = setting(
        None,
        "density level of the surface; omitted: chosen automatically from the field",
        lo=-1e6,
        hi=1e6,
        cli=True,
    )
    auto_level: str = setting(
        "auto",
        "how the automatic surface level is chosen (when threshold is omitted)",
        choices=AUTO_LEVELS,
        api=True,
        cli=True,
        cli_help="silhouette: the level whose silhouettes match the field's rendered opacity; "
        "density: from the density grid's statistics; auto: the rule suiting the field's kind "
        "(silhouette for exp-density NeRFs, density for others)",
    )

    def validate(self) -> ExportConfig:
        validate_settings(self, "export.")
        return self


@dataclass
class GenerationConfig:
    prompt: str = setting(
        help='what to make, e.g. "a red cube"', min_chars=1, max_chars=MAX_PROMPT_CHARS, api=True
    )
    negative_prompt: str = setting(
        "", "what to steer away from", max_chars=MAX_PROMPT_CHARS, api=True, cli=True
    )
    method: str = setting(
        DEFAULT_METHOD,
        "score distillation method: a timestep schedule with a gradient rule (GET /v1/health lists them)",
        choices=method_names,
        api=True,
        cli=True,
    )
    # Defaults are tuned for the built-in demo prior (32 px) on a CPU; Stable Diffusion wants render_size 64
    # and a few thousand steps.
    steps: int = setting(200, "optimization steps", lo=1, hi=20000, api=True, cli=True)
    seed: int = setting(
        0, "random seed; the same seed gives the same result on CPU", lo=0, hi=2**31 - 1, api=True, cli=True
    )
    guidance_scale: float | None = setting(
        None,
        "classifier-free guidance scale; 0 or omitted: the model's recommendation for the method's rule, "
        "else the rule's default",
        lo=0.0,
        hi=1000.0,
        api=True,
        cli=True,
        recommended=True,
    )
    model: str | None = setting(
        None,
        "diffusers model: a local folder or a hub id; omitted: the built-in demo prior",
        min_chars=1,
        max_chars=1024,
        api=True,
        cli=True,
    )
    # Instant generation (docs/design.md, "Prompt-amortized generators"): a trained generator makes the field in
    # one forward pass instead of `steps` of optimization; `init_job` starts a per-prompt optimization from
    # another job's field (Refine: a warm start from an instant result).
    generator: str | None = setting(
        None,
        "a trained generator for instant results: 'demo' or a folder written by train-generator; "
        "omitted: optimize per prompt",
        min_chars=1,
        max_chars=1024,
        api=True,
        cli=True,
    )
    init_job: str | None = setting(
        None,
        "Refine: start the optimization from this finished job's field (its id) instead of the initial blob",
        min_chars=32,
        max_chars=32,
        api=True,
    )
    render_size: int = setting(
        32,
        "side of the rendered training images in pixels",
        lo=16,
        hi=512,
        api=True,
        cli=True,
    )
    batch_size: int = setting(1, "images rendered per step", lo=1, hi=16)
    preview_every: int = setting(
        50, "steps between preview images; 0: none", lo=0, hi=100000, api=True, cli=True
    )
    # A live mesh costs about one step on a CPU with the demo prior (scripts/bench_live.py); every 25 steps
    # keeps them under 10% of the run. Only a caller that shows them asks for them (the service, for the
    # add-on's viewport); the command line and the benchmarks make none.
    live_every: int = setting(
        25,
        "steps between live meshes (a coarse mesh of the field, served while the job runs); 0: none",
        lo=0,
        hi=100000,
        api=True,
    )
    device: str = setting("auto", "where to run: cuda when available, else cpu", choices=DEVICES, cli=True)
    checkpoint_every: int = setting(
        0, "also write a resumable field.pt every N steps (0: only at the end)", lo=0, hi=100000, cli=True
    )
    # Small models on a CPU run fastest on one thread: with OpenMP's passive wait (set by the CLI and the
    # service, which share the CPU with Blender) every parallel region wakes sleeping threads, and a
    # 32-pixel step is thousands of small ones (the demo prior: 2 threads 1.5x slower than 1).
    cpu_threads: int | None = setting(
        None,
        "torch threads of a run on the CPU; omitted: the model's recommendation, else as the process has them",
        lo=1,
        hi=1024,
        recommended=True,
    )
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    # Timesteps, as fractions of the model's T (t_min = 0.02 T, t_max = 0.98 T). t_max None: the model's own
    # recommendation (`dreamsmith.json` beside its model_index.json; the demo prior's is 0.6), else 0.98.
    t_min: float = setting(0.02, "smallest timestep, as a fraction of the model's T", lo=0.0, hi=1.0)
    t_max: float | None = setting(
        None,
        "largest timestep as a fraction of T; omitted: the model's recommendation, else 0.98",
        lo=0.0,
        hi=1.0,
        recommended=True,
    )
    # Uniform schedule window annealing (ScaleDreamer slides [500, 980] to [20, 500]); None = the rule's own.
    anneal_window: tuple[float, float, float, float] | None = setting(
        None, "uniform window [lo, hi] at the start and at the end, fractions of T", lo=0.0, hi=1.0
    )
    # DreamTime prior weight W_p parameters (in timesteps) and whether W_d multiplies it.
    tp_m1: float = setting(800.0, "DreamTime W_p: upper end of the flat top (timesteps)", lo=0.0, hi=1e4)
    tp_m2: float = setting(500.0, "DreamTime W_p: lower end of the flat top (timesteps)", lo=0.0, hi=1e4)
    tp_s1: float = setting(300.0, "DreamTime W_p: width of the upper shoulder", lo=1e-3, hi=1e4)
    tp_s2: float = setting(100.0, "DreamTime W_p: width of the lower shoulder", lo=1e-3, hi=1e4)
    tp_use_wd: bool = setting(True, "DreamTime: multiply W_p by the diffusion weight W_d")
    asd_eta: float = setting(0.1, "ASD: dt ~ U[0, eta (t - t_min)]", lo=0.0, hi=1.0)
    grad_clip: float | None = setting(None, "clip each gradient entry to [-c, c]", lo=1e-6, hi=1e6)

    geometry: str = setting(
        "nerf",
        "the 3D representation: nerf (density field), sdf (VolSDF signed distance) or triplane (a generator's field)",
        choices=geometry_kinds,
    )
    # The starting shape of a nerf geometry: Magic3D's density blob, softplus(raw + b (1 - |x| / r)).
    blob_density: float = setting(
        10.0, "nerf: density bias at the centre of the starting ball (0: no ball)", lo=0.0, hi=100.0
    )
    blob_radius: float = setting(
        0.5, "nerf: radius at which the starting ball's density bias crosses 0", lo=0.05, hi=2.0
    )
    blob_bias: float = setting(
        0.75,
        "nerf: share of the starting ball kept as a permanent density bias (1: Magic3D's; below 1 the field"
        " is fitted to start as the ball and is freer to carve corners and holes)",
        lo=0.0,
        hi=1.0,
    )
    density_activation: str = setting(
        "exp",
        "nerf: raw density to sigma: softplus(raw + ball) (Magic3D's), or exp: softplus(ball) * exp(raw)",
        choices=density_activations,
    )
    # Adam learning rates per part of the field.
    lr_grid: float = setting(1e-2, "learning rate of the hash grid", lo=0.0, hi=1.0)
    lr_mlp: float = setting(1e-3, "learning rate of the MLP heads", lo=0.0, hi=1.0)
    lr_background: float = setting(1e-3, "learning rate of the learned background", lo=0.0, hi=1.0)
    lr_decay: float = setting(
        0.3,
        "learning rates at the last step as a fraction of their start, decayed exponentially (1: constant)",
        lo=1e-4,
        hi=1.0,
    )
    # Regularizer weights.
    lambda_orientation: float = setting(1e-2, "weight of the orientation loss", lo=0.0, hi=1e6)
    lambda_sparsity: float = setting(1e-3, "weight of the opacity (sparsity) penalty", lo=0.0, hi=1e6)
    lambda_depth_variance: float | None = setting(
        None,
        "weight of the depth variance along rays (gathers fog into surfaces); omitted: the model's "
        "recommendation, else 0 (off)",
        lo=0.0,
        hi=1e6,
        recommended=True,
    )
    lambda_opaque: float = setting(
        0.0,
        "weight of the opacity entropy (sharpens silhouettes: pixels fully opaque or empty)",
        lo=0.0,
        hi=1e6,
    )
    lambda_normal_smooth: float = setting(
        0.0, "weight of the smoothness of the rendered normals between neighbouring pixels", lo=0.0, hi=1e6
    )
    lambda_eikonal: float = setting(0.1, "weight of an SDF geometry's eikonal term", lo=0.0, hi=1e6)
    grid_levels_start: int = setting(
        0, "coarse-to-fine: hash-grid levels active at the start (0: all from the start)", lo=0, hi=32
    )
    grid_levels_ramp: float = setting(
        0.5, "coarse-to-fine: fraction of the run after which every level is active", lo=0.0, hi=1.0
    )
    sdf_beta: tuple[float, float] = setting(
        (0.1, 0.1),
        "an SDF geometry's surface softness (Laplace scale), at the start and at the end",
        lo=1e-3,
        hi=1.0,
    )
    # Shading mix (albedo, lambertian, textureless) once warm-up is over, as in DreamFusion.
    shading_warmup_steps: int = setting(100, "steps rendered in albedo shading only", lo=0, hi=100000)
    shading_probs: tuple[float, float, float] = setting(
        (0.5, 0.3, 0.2), "probabilities of albedo, lambertian and textureless shading", lo=0.0, hi=1.0
    )
    ambient: float = setting(0.1, "ambient light of lambertian and textureless shading", lo=0.0, hi=1.0)
    # The demo prior was trained on white backgrounds; "learned" (DreamFusion) suits Stable Diffusion too.
    background: str = setting("white", "what rays that miss the object see", choices=background_kinds)
    samples_per_ray: int = setting(32, "samples per ray of the dense (CPU) renderer", lo=4, hi=1024)

    @property
    def schedule_kind(self) -> str:
        from backend.engine.methods import METHODS

        return METHODS[self.method].schedule.name

    @property
    def gradient_rule(self) -> str:
        from backend.engine.methods import METHODS

        return METHODS[self.method].rule.name

    @property
    def effective_guidance_scale(self) -> float:
        if self.guidance_scale:
            return float(self.guidance_scale)
        from backend.engine.methods import METHODS

        return METHODS[self.method].rule.default_guidance_scale

    def validate(self) -> GenerationConfig:
        """Raise InvalidConfig naming the first bad field; return self so calls chain."""
        validate_config(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_config(cfg: GenerationConfig) -> None:
    validate_settings(cfg)
    if not cfg.prompt.strip():
        raise InvalidConfig("prompt", 'must be a non-empty text, e.g. "a red cube"')
    if cfg.model is not None and not cfg.model.strip():
        raise InvalidConfig("model", "must be a local folder or a hub id (omit it for the demo prior)")
    if cfg.generator is not None and not cfg.generator.strip():
        raise InvalidConfig(
            "generator", "must be 'demo' or a generator folder (omit it to optimize per prompt)"
        )
    if cfg.init_job is not None:
        if not re.fullmatch(r"[0-9a-f]{32}", cfg.init_job):
            raise InvalidConfig("init_job", "must be a job id (32 hex digits, as POST /v1/jobs answers)")
        if cfg.generator is not None:
            raise InvalidConfig("init_job", "Refine optimizes from a job's field: leave generator out")
    t_max = 1.0 if cfg.t_max is None else cfg.t_max
    if not cfg.t_min < t_max:
        raise InvalidConfig("t_min", "need 0 <= t_min < t_max <= 1 (fractions of the model's T)")
    if not sum(cfg.shading_probs) > 0:
        raise InvalidConfig("shading_probs", "must not all be 0")


def _from_plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def recommendable() -> dict[str, Setting]:
    """The settings a model's `dreamsmith.json` may recommend (their None means "the model's value")."""
    return {s.key: s for s in settings_of(GenerationConfig) if s.spec.recommended}


def with_recommendations(cfg: GenerationConfig, recommended: dict[str, Any]) -> GenerationConfig:
    """`cfg` with every recommendable setting it leaves unset filled in: the model's recommendation, else
    the engine's default (`ENGINE_DEFAULTS`; guidance: the method's rule's default). A guidance
    recommendation is a number, or one per rule name ({"sds": 5, "asd": 7.5})."""
    from backend.engine.methods import METHODS

    rule = METHODS[cfg.method].rule
    changes: dict[str, Any] = {}
    for key, default in ENGINE_DEFAULTS.items():
        if getattr(cfg, key) is None:
            changes[key] = float(recommended.get(key, default))
    if not cfg.guidance_scale:
        guidance = recommended.get("guidance_scale")
        if isinstance(guidance, dict):
            guidance = guidance.get(rule.name)
        changes["guidance_scale"] = float(guidance if guidance is not None else rule.default_guidance_scale)
    if cfg.cpu_threads is None and recommended.get("cpu_threads") is not None:
        changes["cpu_threads"] = int(recommended["cpu_threads"])
    return dataclasses.replace(cfg, **changes)


def config_from_dict(data: dict[str, Any]) -> GenerationConfig:
    """Build a config from plain data (JSON request, saved job); unknown keys are refused by name."""
    if not isinstance(data, dict):
        raise InvalidConfig("request", "must be a JSON object")
    data = dict(data)
    nested: dict[str, Any] = {}
    for key, cls in nested_fields(GenerationConfig).items():
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
        nested[key] = cls(**{k: _from_plain(v) for k, v in sub.items()})
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    for k in data:
        if k not in names:
            raise InvalidConfig(k, "unknown field")
    if "prompt" not in data:
        raise InvalidConfig("prompt", "is required")
    data = {k: _from_plain(v) for k, v in data.items()}
    return GenerationConfig(**data, **nested).validate()


def with_overrides(cfg: GenerationConfig, overrides: dict[str, Any]) -> GenerationConfig:
    """A copy of `cfg` with dotted settings replaced ({"export.smoothing": 0, "lr_grid": 0.02}), validated."""
    data = cfg.to_dict()
    known = {s.key for s in settings_of(GenerationConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise InvalidConfig(key, "unknown setting")
        head, _, tail = key.partition(".")
        if tail:
            data[head][tail] = value
        else:
            data[key] = value
    return config_from_dict(data)
