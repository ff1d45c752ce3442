"""Result quality of the four methods against the demo world's ground truth: IoU, colour, speed, diversity.

    .venv/bin/python scripts/bench_quality.py --quick      # 2 prompts x 2 seeds x 4 methods, 100 steps: ~4 min on 2 cores
    .venv/bin/python scripts/bench_quality.py              # 6 prompts x 3 seeds x 4 methods, default steps (~30 min)
    .venv/bin/python scripts/bench_quality.py --quick --set guidance_scale=30 --background white  # a variant

Settings are the config's defaults (`GenerationConfig`) unless overridden (`--steps`, `--render-size`,
`--background`, any field with `--set KEY=VALUE`); runs go in parallel worker processes (`--jobs`, one
per core by default, one torch thread each: small tensors scale badly across threads, and on a shared
machine spinning OpenMP threads cost far more than they give). The demo prior must exist (exit 2 if not).

For every prompt x seed x method one `DistillationRun` is driven step by step (the same engine as
`generate`), and every `--eval-every` steps the field is measured without disturbing the run:

- IoU: the field's density on an R^3 grid (`export.density_grid`, R = `--eval-res`) thresholded with the
  export's own rule (`export.auto_threshold`, or the config's fixed threshold), so "inside" means what
  marching cubes would make of the field at that moment; compared with the world's exact occupancy
  (`demo_world.occupancy`) at the same grid points.
- colour: mean |field albedo - true albedo| (RGB in [0, 1], averaged over channels) at true-surface points
  that the training cameras see (sphere-traced from cameras drawn like the engine's).

At the end the real mesh is exported (`export_result`, the same call `generate` makes) and measured too:
mesh IoU by a ray-parity inside test of the mesh at the cell centres of an R^3 grid, and the colour error
of its vertex colours against the world's albedo at the nearest true-surface point.

Derived numbers, per method:
- steps to IoU x: the first checkpoint from which the IoU stays >= x until the end of the run (a run that
  only touches x and falls back has not reached it); null when the final IoU is below x. Steps are
  counted inside one run of `steps` steps (the prioritized schedules depend on the total). The table
  shows the median over runs, a run that never gets there counting as infinitely slow (">N" when
  half or more never do), and how many runs reached it. The initial density blob alone scores IoU ~0.6
  against every object of the world, hence the default thresholds 0.7 and 0.85 ("IoU@0" column).
- first step at IoU x (per prompt, each seed) and the peak IoU with its step: on objects that are not
  blob-like (cone, cube) every method first sculpts toward the object and then inflates past it, so the
  settled count above misses how fast a method gets there.
- diversity: 1 - mean pairwise IoU of the final occupancies across seeds (same prompt and method).
- Janus (objects with a distinct front, the house): the field is rendered in albedo shading from the front
  and from the back; "door contrast" is (wall luminance - door-area luminance) / the true contrast, where
  the door area is the true door on the front wall and its mirror image on the back wall. A faithful
  result has front ~1 and back ~0; a multi-faced ("Janus") one shows a door at the back too.

Prints a table, writes JSON (`--out`) and a plot of IoU against steps per method (`--plot`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend import demo_world  # noqa: E402
from backend.config import METHODS, CameraConfig, GenerationConfig, config_from_dict  # noqa: E402
from backend.demo_world import DemoObject  # noqa: E402
from backend.engine import export  # noqa: E402
from backend.engine.prior import DEMO_PRIOR_PATH, Prior, load_prior, resolve_device  # noqa: E402
from backend.errors import DreamsmithError  # noqa: E402
from backend.fileio import write_json_atomic  # noqa: E402

QUICK_PROMPTS = ("a red sphere", "a blue house")
FULL_PROMPTS = (
    "a red sphere",
    "a blue cube",
    "a green cylinder",
    "a yellow cone",
    "a purple torus",
    "an orange house",
)
QUICK_SEEDS = (0, 1)
QUICK_STEPS = 100  # 16 runs of ~25 s: about 3.5 minutes on a quiet 2-core CPU (two runs in parallel)
FULL_SEEDS = (0, 1, 2)
# The initial density blob alone scores IoU ~0.6 with every object here, so lower thresholds say nothing.
IOU_THRESHOLDS = (0.7, 0.85)
BOUND = 1.0  # the scene bound of the engine (DESIGN.md conventions)
LUMA = np.array([0.2126, 0.7152, 0.0722])


# ---------------------------------------------------------------------------------------------------
# Ground truth and measurements


def grid_points(resolution: int, bound: float) -> torch.Tensor:
    """[R^3, 3] points of `export.density_grid`'s lattice (R samples per axis over [-bound, bound], ij order)."""
    axis = torch.linspace(-bound, bound, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def cell_centres(resolution: int, bound: float) -> torch.Tensor:
    """[R^3, 3] centres of an R^3 cell grid over [-bound, bound]^3, ij order (for the mesh inside test)."""
    axis = -bound + (torch.arange(resolution, dtype=torch.float32) + 0.5) * (2 * bound / resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def density_threshold(grid: np.ndarray, cfg: GenerationConfig) -> float:
    """The density level marching cubes would use for this grid (the export's own rule)."""
    if cfg.export.threshold is not None:
        return float(cfg.export.threshold)
    return float(export.auto_threshold(grid))


def field_occupancy(field: Any, resolution: int, cfg: GenerationConfig) -> tuple[np.ndarray, float]:
    """bool [R, R, R] (density >= the export's threshold) and the threshold used."""
    grid = export.density_grid(field, resolution)
    level = density_threshold(grid, cfg)
    return grid >= level, level


def visible_surface_points(obj: DemoObject, n: int, seed: int) -> torch.Tensor:
    """[<=n, 3] true-surface points that the engine's training cameras see (sphere-traced hits)."""
    from backend.engine.cameras import sample_cameras

    gen = torch.Generator().manual_seed(seed)
    cams = sample_cameras(CameraConfig(), 16, 48, gen, torch.device("cpu"))
    o, d = cams.rays_o.reshape(-1, 3), cams.rays_d.reshape(-1, 3)
    hit, t = demo_world.sphere_trace(obj, o, d)
    pts = o[hit] + t[hit, None] * d[hit]
    keep = torch.randperm(pts.shape[0], generator=gen)[:n]
    return pts[keep]


def project_to_surface(obj: DemoObject, points: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Nearest true-surface point [N, 3] of points [N, 3] (Newton steps along the SDF gradient)."""
    p = points.clone()
    for _ in range(iterations):
        p = p - demo_world.sdf(obj, p)[:, None] * demo_world.surface_normals(obj, p)
    return p


def colour_error(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute RGB difference (colours in [0, 1])."""
    return float(np.abs(pred - true).mean()) if len(pred) else float("nan")


def colour_named(mean_rgb: np.ndarray) -> str:
    """The world's colour name nearest to `mean_rgb` by chromaticity (brightness-free, so shading cannot flip it)."""
    chroma = mean_rgb / max(float(mean_rgb.sum()), 1e-6)
    names = list(demo_world.COLOURS)
    refs = np.array([demo_world.COLOURS[c] for c in names])
    refs = refs / refs.sum(axis=1, keepdims=True)
    return names[int(np.argmin(np.abs(refs - chroma).sum(axis=1)))]


@torch.no_grad()
def field_albedo(field: Any, points: torch.Tensor, device: torch.device) -> np.ndarray:
    out = [field.albedo(chunk.to(device)).float().cpu() for chunk in points.split(32768)]
    return torch.cat(out).clamp(0, 1).numpy()


def mesh_inside(vertices: np.ndarray, faces: np.ndarray, resolution: int, bound: float) -> np.ndarray:
    """bool [R, R, R]: cell centres inside the mesh, by the parity of crossings along +Z rays.

    Every triangle is rasterised onto the (x, y) columns its projection covers; a crossing at height z
    toggles the inside state for all cell centres above it. Exact for closed meshes; a mesh left open
    (cut by the grid boundary) makes its columns unreliable, which only lowers its IoU.
    """
    R = resolution
    u = (vertices.astype(np.float64) + bound) / (2 * bound) * R - 0.5  # cell-centre index coordinates
    tri = u[faces]  # [M, 3 vertices, 3 coords]
    lo = np.clip(np.ceil(tri[:, :, :2].min(axis=1)), 0, R).astype(np.int64)  # [M, 2]
    hi = np.clip(np.floor(tri[:, :, :2].max(axis=1)), -1, R - 1).astype(np.int64)
    n = np.maximum(hi - lo + 1, 0)  # columns per axis
    counts = n[:, 0] * n[:, 1]
    toggles = np.zeros((R, R, R + 1), dtype=np.int32)
    total = int(counts.sum())
    if total == 0:
        return np.zeros((R, R, R), dtype=bool)
    which = np.repeat(np.arange(len(faces)), counts)
    k = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    px = lo[which, 0] + k % n[which, 0]
    py = lo[which, 1] + k // n[which, 0]
    a, b, c = tri[which, 0], tri[which, 1], tri[which, 2]
    det = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    safe = np.where(det == 0, 1.0, det)
    l1 = ((b[:, 1] - c[:, 1]) * (px - c[:, 0]) + (c[:, 0] - b[:, 0]) * (py - c[:, 1])) / safe
    l2 = ((c[:, 1] - a[:, 1]) * (px - c[:, 0]) + (a[:, 0] - c[:, 0]) * (py - c[:, 1])) / safe
    l3 = 1.0 - l1 - l2
    hit = (det != 0) & (l1 >= 0) & (l2 >= 0) & (l3 >= 0)
    z = l1 * a[:, 2] + l2 * b[:, 2] + l3 * c[:, 2]
    kz = np.clip(np.ceil(z), 0, R).astype(np.int64)  # first cell centre above the crossing
    np.add.at(toggles, (px[hit], py[hit], kz[hit]), 1)
    return (np.cumsum(toggles, axis=2)[:, :, :R] % 2).astype(bool)


# ---------------------------------------------------------------------------------------------------
# Janus: is the house's door (front, -Y wall) also painted on the back?


class JanusProbe:
    """Front and back cameras with the pixels of the true door area and of the wall around it."""

    def __init__(
        self, obj: DemoObject, size: int = 64, elevation: float = 5.0, distance: float = 2.0
    ) -> None:
        from backend.engine.cameras import camera_rays, orbit_camera

        self.obj = obj
        self.views: dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]] = {}
        self.images: dict[str, np.ndarray] = {}
        hy = demo_world.HOUSE_HALF[1]
        for name, az, sign in (("front", 0.0, -1.0), ("back", 180.0, 1.0)):
            c2w = orbit_camera(elevation, az, distance)[None]
            rays_o, rays_d = camera_rays(c2w, torch.tensor([45.0]), size)
            hit, t = demo_world.sphere_trace(obj, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
            p = rays_o.reshape(-1, 3) + t[:, None] * rays_d.reshape(-1, 3)
            on_wall = hit & (p[:, 1] * sign > hy - 0.01) & (p[:, 2] < demo_world.HOUSE_WALL_CENTRE_Z + 0.3)
            door = (p[:, 0].abs() < demo_world.DOOR_HALF_WIDTH) & (p[:, 2] < demo_world.DOOR_TOP_Z)
            # Shrink both areas one pixel's worth so edge blur does not mix them.
            inner = (p[:, 0].abs() < demo_world.DOOR_HALF_WIDTH - 0.03) & (
                p[:, 2] < demo_world.DOOR_TOP_Z - 0.03
            )
            outer = (p[:, 0].abs() > demo_world.DOOR_HALF_WIDTH + 0.03) | (
                p[:, 2] > demo_world.DOOR_TOP_Z + 0.03
            )
            door_px = (on_wall & door & inner).numpy()
            wall_px = (on_wall & ~door & outer).numpy()
            self.views[name] = (rays_o, rays_d, door_px, wall_px)
        body = float(LUMA @ np.array(obj.rgb))
        self.true_contrast = body - float(LUMA @ np.array(demo_world.DOOR_COLOUR))

    @torch.no_grad()
    def measure(self, run: Any) -> dict[str, float]:
        from backend.engine.background import background_color

        out: dict[str, float] = {}
        for name, (rays_o, rays_d, door_px, wall_px) in self.views.items():
            rays_o, rays_d = rays_o.to(run.device), rays_d.to(run.device)
            rng = torch.Generator(device=run.device).manual_seed(0)
            bg = background_color("white", run.background, rays_d, rng)
            light = torch.tensor([[0.0, -1.0, 1.0]], device=run.device)
            render = run.renderer.render(run.field, run.background, rays_o, rays_d, "albedo", light, bg, rng)
            rgb = render.rgb[0].clamp(0, 1).float().cpu().numpy()  # [H, W, 3]
            alpha = render.opacity[0].float().cpu().numpy()  # [H, W, 1]
            self.images[name] = rgb
            # Un-composite the white background, so a fuzzy edge does not pass for a bright wall, and
            # compare only pixels the field covers.
            colour = ((rgb - (1.0 - alpha)) / np.maximum(alpha, 1e-3)).clip(0, 1).reshape(-1, 3)
            solid = alpha.reshape(-1) > 0.5
            door, wall = door_px & solid, wall_px & solid
            if door.sum() < 3 or wall.sum() < 3:
                out[f"door_contrast_{name}"] = float("nan")
                continue
            luma = colour @ LUMA
            contrast = (luma[wall].mean() - luma[door].mean()) / self.true_contrast
            out[f"door_contrast_{name}"] = float(contrast)
        return out

    def strip_png(self) -> bytes:
        """Last measured renders, front | back, then the areas compared (door black, wall grey), as PNG."""
        import io

        from PIL import Image

        panels = [self.images[name] for name in self.views]
        for _, _, door_px, wall_px in self.views.values():
            size = int(round(math.sqrt(door_px.size)))
            mask = np.ones(door_px.size)
            mask[wall_px] = 0.6
            mask[door_px] = 0.0
            panels.append(np.repeat(mask.reshape(size, size, 1), 3, axis=2))
        strip = (np.concatenate(panels, axis=1) * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(strip).save(buf, format="PNG")
        return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# One run


class Truth:
    """Everything known about one world object, computed once and shared by its runs."""

    def __init__(self, obj: DemoObject, eval_res: int, bound: float) -> None:
        self.obj = obj
        self.grid_occ = (
            demo_world.occupancy(obj, grid_points(eval_res, bound)).reshape((eval_res,) * 3).numpy()
        )
        self.cell_occ = (
            demo_world.occupancy(obj, cell_centres(eval_res, bound)).reshape((eval_res,) * 3).numpy()
        )
        self.surface = visible_surface_points(obj, 4096, seed=1234)
        self.surface_albedo = demo_world.albedo(obj, self.surface).numpy()
        self.janus = JanusProbe(obj) if obj.has_front else None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["guidance_scale=20", "camera.fov_deg=[40,50]"] -> {name: value}; values are JSON, else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set wants KEY=VALUE (a GenerationConfig field), got {item!r}")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


def make_config(prompt: str, method: str, seed: int, args: argparse.Namespace) -> GenerationConfig:
    """The config of one run: the defaults, the bench's own settings, then the --set overrides."""
    data: dict[str, Any] = {
        "prompt": prompt,
        "method": method,
        "seed": seed,
        "model": args.model,
        "preview_every": 0,
        "device": args.device,
    }
    if args.steps:
        data["steps"] = args.steps
    if args.render_size:
        data["render_size"] = args.render_size
    if args.background:
        data["background"] = args.background
    nested: dict[str, dict[str, Any]] = {"camera": {}, "export": {}}
    if args.mesh_res:
        nested["export"]["mesh_resolution"] = args.mesh_res
    for key, value in args.overrides.items():
        head, _, tail = key.partition(".")
        if tail and head in nested:
            nested[head][tail] = value
        else:
            data[key] = value
    data |= {k: v for k, v in nested.items() if v}
    return config_from_dict(data)


def evaluate_field(run: Any, truth: Truth, args: argparse.Namespace) -> dict[str, Any]:
    occ, level = field_occupancy(run.field, args.eval_res, run.cfg)
    albedo = field_albedo(run.field, truth.surface, run.device)
    record: dict[str, Any] = {
        "iou": iou(occ, truth.grid_occ),
        "colour_error": colour_error(albedo, truth.surface_albedo),
        "colour_named": colour_named(albedo.mean(axis=0)),
        "threshold": level,
        "occupied_fraction": float(occ.mean()),
    }
    return record | {"_occ": occ}


def evaluate_mesh(mesh_npz: Path, truth: Truth, args: argparse.Namespace, bound: float) -> dict[str, Any]:
    with np.load(mesh_npz) as data:
        vertices, faces, colours = data["vertices"], data["faces"], data["colors"]
    inside = mesh_inside(vertices, faces, args.eval_res, bound)
    rgb = colours[:, :3].astype(np.float64) / 255.0
    nearest = project_to_surface(truth.obj, torch.from_numpy(vertices).float())
    true_rgb = demo_world.albedo(truth.obj, nearest).numpy()
    return {
        "mesh_iou": iou(inside, truth.cell_occ),
        "mesh_colour_error": colour_error(rgb, true_rgb),
        "mesh_colour_named": colour_named(rgb.mean(axis=0)) if len(rgb) else None,
        "mesh_mean_rgb": rgb.mean(axis=0).round(4).tolist() if len(rgb) else None,
        "n_vertices": int(len(vertices)),
        "n_faces": int(len(faces)),
    }


def first_step(curve: list[dict[str, Any]], threshold: float) -> int | None:
    """First checkpoint step with IoU >= threshold, even if the run falls back later; None if never."""
    return next((point["step"] for point in curve if point["iou"] >= threshold), None)


def settled_step(curve: list[dict[str, Any]], threshold: float) -> int | None:
    """First checkpoint step from which the IoU stays >= threshold to the end; None if it ends below."""
    found: int | None = None
    for point in reversed(curve):
        if point["iou"] < threshold:
            break
        found = point["step"]
    return found


def bench_one(
    prior: Prior, device: torch.device, truth: Truth, method: str, seed: int, args: argparse.Namespace
) -> tuple[dict[str, Any], np.ndarray]:
    from backend.engine.pipeline import DistillationRun

    cfg = make_config(truth.obj.prompt, method, seed, args)
    start = time.perf_counter()
    run = DistillationRun(cfg, prior, device)
    curve: list[dict[str, Any]] = []
    eval_s = 0.0

    def checkpoint(step: int) -> np.ndarray:
        nonlocal eval_s
        t0 = time.perf_counter()
        point = evaluate_field(run, truth, args)
        occ = point.pop("_occ")
        curve.append({"step": step} | point)
        eval_s += time.perf_counter() - t0
        if args.verbose:
            per_step = (time.perf_counter() - start - eval_s) / max(step, 1)
            print(
                f"    step {step}: IoU {point['iou']:.3f}, colour err {point['colour_error']:.3f} "
                f"({point['colour_named']}), {per_step:.2f} s/step",
                flush=True,
            )
        return occ

    occ = checkpoint(0)
    for i in range(cfg.steps):
        run.step(i)
        if (i + 1) % args.eval_every == 0 or i + 1 == cfg.steps:
            occ = checkpoint(i + 1)
    optimize_s = time.perf_counter() - start - eval_s
    record: dict[str, Any] = {
        "prompt": cfg.prompt,
        "method": method,
        "seed": seed,
        "steps": cfg.steps,
        "curve": curve,
        "iou_init": curve[0]["iou"],
        "iou": curve[-1]["iou"],
        "colour_error": curve[-1]["colour_error"],
        "colour_named": curve[-1]["colour_named"],
        "colour_ok": curve[-1]["colour_named"] == truth.obj.colour,
        "steps_to": {str(x): settled_step(curve, x) for x in args.thresholds},
        "first_to": {str(x): first_step(curve, x) for x in args.thresholds},
        "peak_iou": max(point["iou"] for point in curve),
        "peak_step": max(curve, key=lambda point: point["iou"])["step"],
        "optimize_s": round(optimize_s, 2),
        "eval_s": round(eval_s, 2),
    }
    t0 = time.perf_counter()
    if truth.janus is not None:
        record |= truth.janus.measure(run)
    record["janus_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            exported = export.export_result(run.field, cfg.export, Path(tmp), None)
            record |= evaluate_mesh(exported.files["mesh.npz"], truth, args, run.field.bound)
            if args.keep_meshes:
                keep = Path(args.keep_meshes) / f"{cfg.prompt.replace(' ', '_')}_{method}_s{seed}"
                keep.mkdir(parents=True, exist_ok=True)
                for name, path in exported.files.items():
                    (keep / name).write_bytes(Path(path).read_bytes())
                (keep / "preview.png").write_bytes(run.preview_png())
                if truth.janus is not None:
                    (keep / "front_back.png").write_bytes(truth.janus.strip_png())
    except DreamsmithError as exc:  # e.g. an empty field: no surface to extract
        record |= {"mesh_iou": 0.0, "mesh_error": str(exc)}
    record["export_s"] = round(time.perf_counter() - t0, 2)
    return record, occ


# ---------------------------------------------------------------------------------------------------
# Summary, table, plot


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def summarize(records: list[dict[str, Any]], finals: dict[tuple[str, str, int], np.ndarray], args) -> dict:
    summary: dict[str, Any] = {}
    for method in args.methods:
        rs = [r for r in records if r["method"] == method]
        if not rs:
            continue
        steps_to = {}
        for x in args.thresholds:
            got = [r["steps_to"][str(x)] for r in rs]
            reached = [s for s in got if s is not None]
            steps_to[str(x)] = {
                # Median over runs with "not reached" counted as infinitely slow (None if most never get there).
                "median": float(np.median([s if s is not None else math.inf for s in got]))
                if len(reached) * 2 > len(got)
                else None,
                "mean_reached": _mean(reached),
                "reached": len(reached),
                "runs": len(got),
            }
        diversities = []
        for prompt in args.prompts:
            occs = [finals[(prompt, method, s)] for s in args.seeds if (prompt, method, s) in finals]
            pairs = [iou(a, b) for a, b in itertools.combinations(occs, 2)]
            if pairs:
                diversities.append(1.0 - float(np.mean(pairs)))
        janus = [r for r in rs if "door_contrast_front" in r]
        summary[method] = {
            "iou_init": _mean([r["iou_init"] for r in rs]),
            "iou": _mean([r["iou"] for r in rs]),
            "mesh_iou": _mean([r.get("mesh_iou") for r in rs]),
            "colour_error": _mean([r["colour_error"] for r in rs]),
            "mesh_colour_error": _mean([r.get("mesh_colour_error") for r in rs]),
            "colour_ok": _mean([float(r["colour_ok"]) for r in rs]),
            "steps_to": steps_to,
            "diversity": _mean(diversities),
            "door_contrast_front": _mean([r["door_contrast_front"] for r in janus]),
            "door_contrast_back": _mean([r["door_contrast_back"] for r in janus]),
            "optimize_s": _mean([r["optimize_s"] for r in rs]),
            "runs": len(rs),
        }
    return summary


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _fmt_steps(entry: dict[str, Any], total: int) -> str:
    if entry["median"] is None:
        return f">{total} ({entry['reached']}/{entry['runs']})"
    med = entry["median"]
    return (f">{total}" if math.isinf(med) else f"{med:.0f}") + f" ({entry['reached']}/{entry['runs']})"


def print_table(summary: dict[str, Any], args: argparse.Namespace, steps: int) -> None:
    cols = ["method", "IoU@0", "IoU", "meshIoU", "colErr", "meshCol", "col ok"]
    cols += [f"steps>={x}" for x in args.thresholds] + ["divers.", "door F/B", "s/run"]
    rows = []
    for method, s in summary.items():
        door = "-"
        if s["door_contrast_front"] is not None:
            door = f"{s['door_contrast_front']:.2f}/{s['door_contrast_back']:.2f}"
        rows.append(
            [
                method,
                _fmt(s["iou_init"]),
                _fmt(s["iou"]),
                _fmt(s["mesh_iou"]),
                _fmt(s["colour_error"]),
                _fmt(s["mesh_colour_error"]),
                _fmt(s["colour_ok"], ".0%"),
            ]
            + [_fmt_steps(s["steps_to"][str(x)], steps) for x in args.thresholds]
            + [_fmt(s["diversity"]), door, _fmt(s["optimize_s"], ".0f")]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def per_prompt(records: list[dict[str, Any]], key: str) -> dict[str, dict[str, float | None]]:
    """{prompt: {method: mean of `key` over seeds}}."""
    table: dict[str, dict[str, float | None]] = {}
    for r in records:
        table.setdefault(r["prompt"], {}).setdefault(r["method"], None)
    for prompt, row in table.items():
        for method in row:
            row[method] = _mean(
                [r.get(key) for r in records if r["prompt"] == prompt and r["method"] == method]
            )
    return table


def print_matrix(records: list[dict[str, Any]], key: str, title: str) -> None:
    table = per_prompt(records, key)
    methods = list(dict.fromkeys(r["method"] for r in records))
    width = max(len(p) for p in table) + 2
    print(f"\n{title}")
    print(" " * width + "".join(m.ljust(9) for m in methods))
    for prompt, row in table.items():
        print(prompt.ljust(width) + "".join(_fmt(row.get(m)).ljust(9) for m in methods))


def print_first_reach(records: list[dict[str, Any]], thresholds: list[float]) -> None:
    """Per prompt and method: the first step each seed touched IoU x ("-": never), and the peak IoU."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    print("\nfirst step at IoU >= x per seed ('-': never), then the peak IoU (mean over seeds) and its steps")
    for prompt in prompts:
        for x in [*thresholds, "peak"]:
            cells = []
            for m in methods:
                rs = [r for r in records if r["prompt"] == prompt and r["method"] == m]
                if x == "peak":
                    steps = "/".join(str(r["peak_step"]) for r in rs)
                    cells.append(f"{_fmt(_mean([r['peak_iou'] for r in rs]), '.2f')} @ {steps}")
                else:
                    cells.append(
                        "/".join(
                            "-" if r["first_to"][str(x)] is None else str(r["first_to"][str(x)]) for r in rs
                        )
                    )
            label = f"{prompt}, {'peak' if x == 'peak' else f'>= {x}'}"
            print(f"  {label:<28}" + "".join(f"{m}: {c:<22}" for m, c in zip(methods, cells, strict=True)))


def print_per_prompt(records: list[dict[str, Any]]) -> None:
    print("\nper run: prompt / method / seed -> IoU@0 -> IoU (mesh IoU), colour, mean mesh RGB")
    for r in records:
        rgb = r.get("mesh_mean_rgb")
        janus = ""
        if "door_contrast_front" in r:
            janus = f"  door F/B {r['door_contrast_front']:.2f}/{r['door_contrast_back']:.2f}"
        print(
            f"  {r['prompt']:<18} {r['method']:<7} s{r['seed']}  {r['iou_init']:.3f} -> {r['iou']:.3f} "
            f"({_fmt(r.get('mesh_iou'))})  col {r['colour_error']:.3f} {r['colour_named']:<6} "
            f"rgb {rgb}{janus}"
        )


def plot(records: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    panels = ["all prompts"] + (prompts if len(prompts) > 1 else [])
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colours = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))
    for ax, panel in zip(axes.flat, panels, strict=False):
        for method in args.methods:
            rs = [r for r in records if r["method"] == method and panel in ("all prompts", r["prompt"])]
            if not rs:
                continue
            steps = [p["step"] for p in rs[0]["curve"]]
            curves = np.array([[p["iou"] for p in r["curve"]] for r in rs])
            ax.plot(steps, curves.mean(axis=0), color=colours.get(method), label=method, lw=2)
            if len(rs) > 1:
                ax.fill_between(
                    steps, curves.min(axis=0), curves.max(axis=0), color=colours.get(method), alpha=0.12
                )
        for x in args.thresholds:
            ax.axhline(x, color="grey", lw=0.8, ls=":")
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.set_ylabel("IoU (density grid vs exact occupancy)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(loc="lower right")
    fig.suptitle("IoU against steps (mean over seeds; band = min..max)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------


# Per-process state: the prior and each object's ground truth, loaded once per worker.
_WORKER: dict[str, Any] = {}


def _init_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    _WORKER["args"] = args
    _WORKER["device"] = resolve_device(args.device)
    _WORKER["prior"] = load_prior(args.model, _WORKER["device"])
    _WORKER["truths"] = {}


def _run_task(task: tuple[str, str, int]) -> tuple[dict[str, Any], np.ndarray]:
    prompt, method, seed = task
    args, truths = _WORKER["args"], _WORKER["truths"]
    if prompt not in truths:
        truths[prompt] = Truth(demo_world.parse_prompt(prompt), args.eval_res, BOUND)
    return bench_one(_WORKER["prior"], _WORKER["device"], truths[prompt], method, seed, args)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{len(QUICK_PROMPTS)} prompts x {len(QUICK_SEEDS)} seeds x 4 methods, {QUICK_STEPS} steps, renders at "
        "the prior's input size",
    )
    parser.add_argument(
        "--model", default=None, help="diffusers model folder or hub id (default: demo prior)"
    )
    parser.add_argument("--prompts", nargs="+", default=None, help="world prompts, e.g. 'a red sphere'")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the config's)")
    parser.add_argument("--render-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--background", default=None, help="learned | random | white (default: the config's)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a GenerationConfig field, e.g. --set guidance_scale=30 --set export.threshold=5",
    )
    parser.add_argument("--mesh-res", type=int, default=None, help="export marching-cubes resolution")
    parser.add_argument("--eval-res", type=int, default=64, help="grid resolution of the IoU (default 64)")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between checkpoints")
    parser.add_argument("--thresholds", nargs="+", type=float, default=list(IOU_THRESHOLDS))
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--keep-meshes", default=None, help="keep every run's mesh files and a front preview in this folder"
    )
    parser.add_argument("--jobs", type=int, default=0, help="runs in parallel (0: one per CPU core, max 4)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: cores / jobs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every checkpoint")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "quality.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench_results" / "quality_iou.png")
    args = parser.parse_args(argv)
    args.overrides = parse_overrides(args.overrides)
    if args.quick:
        args.prompts = args.prompts or list(QUICK_PROMPTS)
        args.seeds = args.seeds or list(QUICK_SEEDS)
        args.steps = args.steps or QUICK_STEPS
        args.mesh_res = args.mesh_res or 64
    args.prompts = args.prompts or list(FULL_PROMPTS)
    args.seeds = args.seeds or list(FULL_SEEDS)
    for p in args.prompts:
        demo_world.parse_prompt(p)  # fails early, naming the prompt, if the world has no such object
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as exc:
        print(f"bench_quality: {exc}", file=sys.stderr)
        return 2
    try:
        probe = make_config(args.prompts[0], args.methods[0], 0, args)  # the settings every run shares
    except DreamsmithError as exc:  # a bad --set or out-of-range setting
        print(f"bench_quality: {exc}", file=sys.stderr)
        return 2
    steps = probe.steps
    args.eval_every = args.eval_every or max(1, steps // 12)
    if args.model is None and not (DEMO_PRIOR_PATH / "model_index.json").is_file():
        print(
            f"bench_quality: the demo prior is missing ({DEMO_PRIOR_PATH}); train it or pass --model",
            file=sys.stderr,
        )
        return 2
    device = resolve_device(args.device)
    n_runs = len(args.prompts) * len(args.seeds) * len(args.methods)
    cores = os.cpu_count() or 1
    if not args.jobs:  # CPU: one run per core (small tensors scale poorly across threads); GPU: one
        args.jobs = 1 if device.type == "cuda" else max(1, min(cores, 4, n_runs))
    args.threads = args.threads or max(1, cores // args.jobs)
    start = time.perf_counter()
    try:
        _init_worker(args)  # loads the prior here too: a bad --model fails before any worker starts
    except DreamsmithError as exc:
        print(f"bench_quality: {exc}", file=sys.stderr)
        return 2
    if args.quick and not args.render_size:
        # The prior resizes every render to its input size: rendering larger only costs time.
        args.render_size = _WORKER["prior"].input_size
        probe = make_config(args.prompts[0], args.methods[0], 0, args)
    print(
        f"bench_quality: {len(args.prompts)} prompts x {len(args.seeds)} seeds x {len(args.methods)} methods "
        f"= {n_runs} runs of {steps} steps at {probe.render_size} px, "
        f"IoU on {args.eval_res}^3 every {args.eval_every} steps, "
        f"{_WORKER['prior']!r}, {args.jobs} parallel run(s) x {args.threads} torch thread(s)",
        flush=True,
    )
    tasks = [(p, m, s) for p in args.prompts for m in args.methods for s in args.seeds]
    records: list[dict[str, Any]] = []
    finals: dict[tuple[str, str, int], np.ndarray] = {}

    def done(record: dict[str, Any], occ: np.ndarray) -> None:
        records.append(record)
        finals[(record["prompt"], record["method"], record["seed"])] = occ
        print(
            f"  [{len(records)}/{n_runs}] {record['prompt']} {record['method']} seed {record['seed']}: IoU "
            f"{record['iou_init']:.3f} -> {record['iou']:.3f} (mesh {_fmt(record.get('mesh_iou'))}), colour "
            f"err {record['colour_error']:.3f} ({record['colour_named']}), {record['optimize_s']:.0f} s "
            f"+ eval {record['eval_s']:.0f} s + export {record['export_s']:.0f} s "
            f"[{time.perf_counter() - start:.0f} s total]",
            flush=True,
        )

    if args.jobs == 1:
        for task in tasks:
            done(*_run_task(task))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            args.jobs, mp_context=context, initializer=_init_worker, initargs=(args,)
        ) as pool:
            for future in as_completed([pool.submit(_run_task, task) for task in tasks]):
                done(*future.result())
    order = {task: i for i, task in enumerate(tasks)}
    records.sort(key=lambda r: order[(r["prompt"], r["method"], r["seed"])])
    summary = summarize(records, finals, args)
    wall = time.perf_counter() - start
    print()
    print_table(summary, args, steps)
    if len(args.prompts) > 1:
        print_matrix(records, "iou", "final IoU (density grid), mean over seeds")
        print_matrix(records, "mesh_colour_error", "mesh colour error, mean over seeds")
    print_first_reach(records, args.thresholds)
    print_per_prompt(records)
    budget = " (quick mode target: about 300 s)" if args.quick else ""
    print(f"\nbudget used: {wall:.0f} s wall for {n_runs} runs{budget}")
    result = {
        "settings": {
            "prompts": args.prompts,
            "seeds": args.seeds,
            "methods": args.methods,
            "steps": steps,
            "eval_res": args.eval_res,
            "eval_every": args.eval_every,
            "thresholds": args.thresholds,
            "model": args.model or "demo",
            "config": probe.to_dict(),
            "quick": args.quick,
        },
        "machine": {
            "device": str(device),
            "torch": torch.__version__,
            "jobs": args.jobs,
            "threads": args.threads,
            "platform": platform.platform(),
        },
        "wall_s": round(wall, 1),
        "summary": summary,
        "per_prompt": {key: per_prompt(records, key) for key in ("iou", "mesh_iou", "mesh_colour_error")},
        "runs": records,
    }
    write_json_atomic(args.out, result)
    plot(records, args, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
