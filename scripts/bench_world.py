"""The world benchmark: every object of the demo world generated at default settings and judged against the truth.

    .venv/bin/python scripts/bench_world.py                       # 36 objects x 4 seeds (about 20 min on 2 cores)
    .venv/bin/python scripts/bench_world.py --quick               # every shape once per seed, 24 runs (< 10 min)
    .venv/bin/python scripts/bench_world.py --supervision truth   # the ceiling: exact renders instead of the prior
    .venv/bin/python scripts/bench_world.py --start truth         # distillation from the ceiling's field
    .venv/bin/python scripts/bench_world.py --quick --methods tp-sds sds asd tp-asd csd
    .venv/bin/python scripts/bench_world.py --quick --set lr_grid=0.02 --tag lr02   # a variant

Each run is the engine's own generation (`DistillationRun` + `export_result`, the calls `generate` makes) at
the config's defaults unless `--steps` or `--set KEY=VALUE` change them, scored by `backend.evaluation`:
right/wrong (the asked shape fits the mesh best, the asked colour, IoU >= 0.7), mesh IoU, colour error,
surface error (Chamfer distance and mean normal angle against the true surface, which see pits that IoU
misses), the house's door contrast front/back (Janus), whether a torus' hole is open, and wall time.
With `--supervision truth` the prior is replaced by exact renders of the true object (same field,
renderer, cameras, optimizer and export): the representation's ceiling. `--truth-background random`
gives those fits a random solid background colour per image instead of the run's white one: on white a
yellow object's opacity shows in the blue channel alone, and the ceiling's yellow objects come out porous
(whole world: white 97.2% right, IoU 0.923, the two yellow cubes wrong; random 100%, IoU 0.915, every
yellow object right but cones and tori swollen: volume 1.08 against 1.02). With `--start truth` each run
first fits the field to those exact renders (the ceiling's run) and then distils from there with the same
settings, as a Refine would: what the prior does to the right object, apart from how the optimization
gets there from the blob (the starting fit is scored too, as `start_iou`).

Prints a summary per method (world accuracy, mean IoU, mean surface error, time) and per-shape rows,
writes JSON (`--out`) and a contact sheet PNG per method (`--sheet`): every mesh from two sides, labelled,
the wrong ones framed red. Runs go in parallel worker processes, one torch thread each (`--jobs`).
"""

from __future__ import annotations

import argparse
import io
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
# Before torch loads: OpenMP's busy-waiting threads slow torch down many times over on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend import demo_world  # noqa: E402
from backend.cli import parse_overrides  # noqa: E402
from backend.config import DEFAULT_METHOD, GenerationConfig, with_overrides  # noqa: E402
from backend.demo_world import DemoObject  # noqa: E402
from backend.engine.background import BACKGROUNDS  # noqa: E402
from backend.engine.methods import METHODS  # noqa: E402
from backend.errors import DreamsmithError  # noqa: E402
from backend.evaluation import metrics  # noqa: E402
from backend.evaluation.thumbnails import Tile, contact_sheet, mesh_tile  # noqa: E402
from backend.evaluation.truth import Truth, cell_centres  # noqa: E402
from backend.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402

SEEDS = (0, 1, 2, 3)
QUICK_OBJECTS = tuple(  # every shape once, the colours rotated so that each appears too
    DemoObject(shape, colour).prompt
    for shape, colour in zip(demo_world.SHAPES, demo_world.COLOURS, strict=True)
)
IOU_THRESHOLDS = (0.7, 0.85)


def all_prompts() -> list[str]:
    return [obj.prompt for obj in demo_world.all_objects()]


def torus_hole_open(vertices: np.ndarray, faces: np.ndarray, resolution: int = 64) -> bool:
    """A torus' hole is open when (almost) none of the cells around its axis near its middle plane are
    inside the mesh (the true hole has radius 0.21)."""
    inside = metrics.mesh_inside(vertices, faces, resolution, 1.0).reshape(-1)
    c = cell_centres(resolution).numpy()
    axis = (np.hypot(c[:, 0], c[:, 1]) < 0.12) & (np.abs(c[:, 2]) < 0.12)
    return bool(inside[axis].mean() < 0.1)


def run_config(prompt: str, method: str, seed: int, args: argparse.Namespace) -> GenerationConfig:
    changes: dict[str, Any] = {"method": method, "seed": seed, "preview_every": 0, "device": args.device}
    if args.model:
        changes["model"] = args.model
    if args.steps:
        changes["steps"] = args.steps
    return with_overrides(GenerationConfig(prompt=prompt), changes | args.overrides)


def truth_config(cfg: GenerationConfig, args: argparse.Namespace) -> GenerationConfig:
    """The config of a fit to exact renders (the ceiling, `--start truth`'s first phase): `cfg` on the
    `--truth-background`."""
    return with_overrides(cfg, {"background": args.truth_background})


def bench_one(
    task: tuple[str, str, int], args: argparse.Namespace, prior: Any, device: torch.device
) -> dict[str, Any]:
    from backend.engine.export import export_result
    from backend.engine.optimize import DistillationRun
    from backend.evaluation.supervision import PhotometricTruth

    prompt, method, seed = task
    obj = demo_world.parse_prompt(prompt)
    truth = _truth(obj, args.eval_res)
    cfg = run_config(prompt, method, seed, args)
    supervision = None
    if args.supervision == "truth":
        cfg = truth_config(cfg, args)
        supervision = PhotometricTruth(obj, ambient=cfg.ambient)
    start = time.perf_counter()
    start_record: dict[str, Any] = {}
    geometry = None
    if args.start == "truth":
        fit_cfg = truth_config(cfg, args)
        fit = DistillationRun(fit_cfg, prior, device, supervision=PhotometricTruth(obj, ambient=cfg.ambient))
        for i in range(cfg.steps):
            fit.step(i)
        geometry = fit.geometry
        start_record = {"start_iou": metrics.score_field(geometry, truth, fit.cfg.export)["iou"]}
        start = time.perf_counter()
    run = DistillationRun(cfg, prior, device, supervision=supervision, geometry=geometry)
    curve: list[dict[str, Any]] = []
    eval_s = 0.0
    for i in range(cfg.steps):
        run.step(i)
        if args.eval_every and ((i + 1) % args.eval_every == 0 or i + 1 == cfg.steps):
            t0 = time.perf_counter()
            curve.append({"step": i + 1} | metrics.score_field(run.geometry, truth, cfg.export))
            eval_s += time.perf_counter() - t0
    optimize_s = time.perf_counter() - start - eval_s
    record: dict[str, Any] = {"prompt": prompt, "shape": obj.shape, "colour": obj.colour, "method": method}
    record |= {"seed": seed, "steps": cfg.steps, "optimize_s": round(optimize_s, 2)} | start_record
    if truth.janus is not None:
        record |= truth.janus.measure(run.geometry, run.renderer)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        try:
            export_result(run.geometry, cfg.export, Path(tmp))
        except DreamsmithError as exc:  # an empty field: a wrong result, not a crash of the benchmark
            return record | {"ok": False, "error": str(exc), "export_s": 0.0, "gen_s": round(optimize_s, 2)}
        export_s = time.perf_counter() - t0
        record |= metrics.score_mesh(tmp, truth)
        vertices, faces, colours = metrics.load_mesh(tmp)
        if obj.shape == "torus":
            record["hole_open"] = torus_hole_open(vertices, faces)
        record["tile"] = mesh_tile(vertices, faces, colours, args.tile) if args.sheet else None
        if args.keep_meshes:
            keep = Path(args.keep_meshes) / f"{method}-{obj.colour}_{obj.shape}-s{seed}"
            keep.mkdir(parents=True, exist_ok=True)
            for f in Path(tmp).iterdir():
                write_bytes_atomic(keep / f.name, f.read_bytes())
    if curve:
        record["curve"] = curve
        record["first_to"] = {
            str(x): next((p["step"] for p in curve if p["iou"] >= x), None) for x in args.thresholds
        }
    record |= {"export_s": round(export_s, 2), "gen_s": round(optimize_s + export_s, 2)}
    return record


_TRUTHS: dict[tuple[str, str, int], Truth] = {}


def _truth(obj: DemoObject, eval_res: int) -> Truth:
    key = (obj.shape, obj.colour, eval_res)
    if key not in _TRUTHS:
        _TRUTHS[key] = Truth(obj, eval_res)
    return _TRUTHS[key]


# Per-process state: the prior, loaded once per worker.
_WORKER: dict[str, Any] = {}


def _init_worker(args: argparse.Namespace) -> None:
    from backend.engine.prior import load_prior, resolve_device

    torch.set_num_threads(args.threads)
    _WORKER["args"] = args
    _WORKER["device"] = resolve_device(args.device)
    _WORKER["prior"] = load_prior(args.model, _WORKER["device"])


def _run_task(task: tuple[str, str, int]) -> dict[str, Any]:
    return bench_one(task, _WORKER["args"], _WORKER["prior"], _WORKER["device"])


# ---------------------------------------------------------------------------------------------------
# Summaries


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """World accuracy, mean IoU, surface error, time; overall and per shape."""

    def block(rs: list[dict[str, Any]]) -> dict[str, Any]:
        tori = [r for r in rs if r["shape"] == "torus" and "hole_open" in r]
        houses = [r for r in rs if "door_contrast_front" in r]
        return {
            "runs": len(rs),
            "accuracy": sum(bool(r.get("ok")) for r in rs) / max(len(rs), 1),
            "mesh_iou": _mean([r.get("mesh_iou", 0.0) for r in rs]),
            "chamfer": _mean([r.get("chamfer", float("nan")) for r in rs]),
            "volume_ratio": _mean([r.get("volume_ratio", float("nan")) for r in rs]),
            "normal_deg": _mean([r.get("normal_deg", float("nan")) for r in rs]),
            "colour_error": _mean([r.get("mesh_colour_error", float("nan")) for r in rs]),
            "gen_s": _mean([r["gen_s"] for r in rs]),
            "tori_open": f"{sum(r['hole_open'] for r in tori)}/{len(tori)}" if tori else None,
            "door_front": _mean([r["door_contrast_front"] for r in houses]) if houses else None,
            "door_back": _mean([r["door_contrast_back"] for r in houses]) if houses else None,
            "start_iou": _mean([r["start_iou"] for r in rs]) if any("start_iou" in r for r in rs) else None,
        }

    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        out[method] = block(rs) | {
            "per_shape": {
                s: block([r for r in rs if r["shape"] == s]) for s in dict.fromkeys(r["shape"] for r in rs)
            },
            # One seed is one draw of the cameras (and noise) for every object: how far apart they land
            # says how much a world figure from few seeds can be trusted.
            "per_seed": {
                str(seed): block([r for r in rs if r["seed"] == seed])
                for seed in sorted({r["seed"] for r in rs})
            },
        }
    return out


def _f(value: Any, fmt: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return "nan" if not math.isfinite(value) else format(value, fmt)


def print_summary(summary: dict[str, Any], label: str) -> None:
    print(f"\n{label}")
    head = f"{'method':<8} {'runs':>4} {'accuracy':>8} {'meshIoU':>7} {'chamfer':>7} {'normal°':>7} {'volume':>6} {'colErr':>6} {'tori open':>9} {'door F/B':>11} {'s/run':>6}"
    print(head)
    print("-" * len(head))
    for method, s in summary.items():
        door = (
            f"{_f(s['door_front'], '.2f')}/{_f(s['door_back'], '.2f')}"
            if s["door_front"] is not None
            else "-"
        )
        print(
            f"{method:<8} {s['runs']:>4} {s['accuracy']:>8.1%} {_f(s['mesh_iou']):>7} {_f(s['chamfer'], '.4f'):>7} "
            f"{_f(s['normal_deg'], '.1f'):>7} {_f(s['volume_ratio'], '.2f'):>6} {_f(s['colour_error']):>6} {_f(s['tori_open']):>9} {door:>11} {_f(s['gen_s'], '.1f'):>6}"
        )
    for method, s in summary.items():
        print(f"\nper shape ({method})")
        print(
            f"{'shape':<9} {'runs':>4} {'accuracy':>8} {'meshIoU':>7} {'chamfer':>7} {'normal°':>7} {'volume':>6} {'s/run':>6}"
        )
        for shape, r in s["per_shape"].items():
            print(
                f"{shape:<9} {r['runs']:>4} {r['accuracy']:>8.1%} {_f(r['mesh_iou']):>7} {_f(r['chamfer'], '.4f'):>7} "
                f"{_f(r['normal_deg'], '.1f'):>7} {_f(r['volume_ratio'], '.2f'):>6} {_f(r['gen_s'], '.1f'):>6}"
                + (f"   start field IoU {_f(r['start_iou'])}" if r["start_iou"] is not None else "")
            )
        if len(s["per_seed"]) > 1:
            print(
                "per seed: "
                + ", ".join(
                    f"s{seed} {r['accuracy']:.1%} IoU {_f(r['mesh_iou'])}"
                    for seed, r in s["per_seed"].items()
                )
            )


def print_runs(runs: list[dict[str, Any]]) -> None:
    print("\nper run")
    for r in runs:
        mark = "ok   " if r.get("ok") else "WRONG"
        extra = ""
        if "hole_open" in r:
            extra += f" hole {'open' if r['hole_open'] else 'closed'}"
        if "door_contrast_front" in r:
            extra += f" door F/B {_f(r['door_contrast_front'], '.2f')}/{_f(r['door_contrast_back'], '.2f')}"
        if "first_to" in r:
            extra += " first " + " ".join(
                f"{k}@{v if v is not None else '-'}" for k, v in r["first_to"].items()
            )
        print(
            f"  {mark} {r['method']:<7} {r['prompt']:<19} s{r['seed']} IoU {_f(r.get('mesh_iou'))} "
            f"best {r.get('best_shape', '-'):<8} colour {r.get('mesh_colour_named', '-'):<6} "
            f"chamfer {_f(r.get('chamfer'), '.4f')} normal {_f(r.get('normal_deg'), '.1f')}° "
            f"volume {_f(r.get('volume_ratio'), '.2f')} {r['gen_s']:.1f} s{extra}"
            + (f" ({r['error']})" if "error" in r else "")
        )


def write_sheets(runs: list[dict[str, Any]], args: argparse.Namespace, label: str) -> list[Path]:
    written = []
    for method in dict.fromkeys(r["method"] for r in runs):
        tiles = []
        for r in (r for r in runs if r["method"] == method):
            image = (
                np.asarray(r["tile"], dtype=np.uint8)
                if r.get("tile") is not None
                else np.full((args.tile, 2 * args.tile, 3), 255, np.uint8)
            )
            lines = [
                f"{r['prompt']} s{r['seed']}",
                f"IoU {_f(r.get('mesh_iou'), '.2f')} best {r.get('best_shape', '-')}",
            ]
            lines.append(
                f"normal {_f(r.get('normal_deg'), '.0f')}° " + ("hole open" if r.get("hole_open") else "")
            )
            tiles.append(Tile(image, lines, bool(r.get("ok"))))
        acc = sum(bool(r.get("ok")) for r in runs if r["method"] == method)
        n = sum(1 for r in runs if r["method"] == method)
        title = f"{label} - {method}: {acc}/{n} right"
        path = (
            args.sheet.with_name(f"{args.sheet.stem}_{method}{args.sheet.suffix}")
            if len(args.methods) > 1
            else args.sheet
        )
        buf = io.BytesIO()
        contact_sheet(tiles, columns=args.columns, title=title).save(buf, format="PNG")
        written.append(write_bytes_atomic(path, buf.getvalue()))
    return written


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{len(QUICK_OBJECTS)} objects (every shape) x the seeds"
    )
    parser.add_argument(
        "--objects", nargs="+", default=None, help="world prompts, e.g. 'a red sphere' (default: all 36)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", default=[DEFAULT_METHOD], choices=list(METHODS))
    parser.add_argument(
        "--supervision", default="prior", choices=("prior", "truth"), help="truth: the ceiling"
    )
    parser.add_argument(
        "--start",
        default="blob",
        choices=("blob", "truth"),
        help="truth: start each run from the field fitted to exact renders (the ceiling's run), not the blob",
    )
    parser.add_argument(
        "--truth-background",
        default="white",
        choices=list(BACKGROUNDS),
        help="background of the fits to exact renders (the ceiling, --start truth); random: a solid colour "
        "per image, so that no object's colour blends into it",
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the config's)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    parser.add_argument("--model", default=None, help="diffusers model folder (default: the demo prior)")
    parser.add_argument("--eval-res", type=int, default=64, help="grid resolution of the IoU (default 64)")
    parser.add_argument(
        "--eval-every", type=int, default=0, help="also score the field every N steps (IoU curves)"
    )
    parser.add_argument("--thresholds", nargs="+", type=float, default=list(IOU_THRESHOLDS))
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--jobs", type=int, default=0, help="runs in parallel (0: one per CPU core, at most 4)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: cores / jobs)")
    parser.add_argument("--tag", default="", help="a name for this variant in the output file names")
    parser.add_argument("--keep-meshes", default=None, help="keep every run's mesh files in this folder")
    parser.add_argument("--tile", type=int, default=96, help="contact sheet picture size per view")
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON (default bench_results/world[_truth][_TAG].json)"
    )
    parser.add_argument(
        "--sheet", type=Path, default=None, help="contact sheet PNG (default beside the JSON)"
    )
    args = parser.parse_args(argv)
    args.overrides = parse_overrides(args.overrides)
    args.objects = args.objects or (list(QUICK_OBJECTS) if args.quick else all_prompts())
    for p in args.objects:
        demo_world.parse_prompt(p)  # fails early, naming the prompt, if the world has no such object
    name = "world" + ("_quick" if args.quick else "") + ("_truth" if args.supervision == "truth" else "")
    name += "_from_truth" if args.start == "truth" else ""
    name += f"_{args.tag}" if args.tag else ""
    args.out = args.out or ROOT / "bench_results" / f"{name}.json"
    args.sheet = args.sheet or args.out.with_suffix(".png")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        probe = run_config(args.objects[0], args.methods[0], 0, args)
    except (ValueError, DreamsmithError) as exc:
        print(f"bench_world: {exc}", file=sys.stderr)
        return 2
    tasks = [(p, m, s) for m in args.methods for p in args.objects for s in args.seeds]
    cores = os.cpu_count() or 1
    device_is_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if not args.jobs:
        args.jobs = 1 if device_is_cuda else max(1, min(cores, 4, len(tasks)))
    args.threads = args.threads or max(1, cores // args.jobs)
    label = "ceiling (supervision: truth)" if args.supervision == "truth" else "prior"
    label += " from the truth-fitted field" if args.start == "truth" else ""
    label += f" {args.tag}" if args.tag else ""
    print(
        f"bench_world [{label}]: {len(args.objects)} objects x {len(args.seeds)} seeds x {len(args.methods)} methods "
        f"= {len(tasks)} runs of {probe.steps} steps at {probe.render_size} px, {args.jobs} parallel x {args.threads} thread(s)",
        flush=True,
    )
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []

    def done(record: dict[str, Any]) -> None:
        runs.append(record)
        print(
            f"  [{len(runs)}/{len(tasks)}] {'ok   ' if record.get('ok') else 'WRONG'} {record['method']} {record['prompt']} "
            f"s{record['seed']}: IoU {_f(record.get('mesh_iou'))} best {record.get('best_shape', '-')} "
            f"normal {_f(record.get('normal_deg'), '.1f')}° {record['gen_s']:.0f} s [{time.perf_counter() - start:.0f} s]",
            flush=True,
        )

    try:
        if args.jobs == 1:
            _init_worker(args)
            for task in tasks:
                done(_run_task(task))
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                args.jobs, mp_context=context, initializer=_init_worker, initargs=(args,)
            ) as pool:
                for future in as_completed([pool.submit(_run_task, task) for task in tasks]):
                    done(future.result())
    except DreamsmithError as exc:  # e.g. a --model that does not load
        print(f"bench_world: {exc}", file=sys.stderr)
        return 2
    order = {task: i for i, task in enumerate(tasks)}
    runs.sort(key=lambda r: order[(r["prompt"], r["method"], r["seed"])])
    summary = summarize(runs)
    wall = time.perf_counter() - start
    print_runs(runs)
    print_summary(summary, f"summary [{label}]")
    print(f"\n{len(tasks)} runs in {wall:.0f} s wall ({args.jobs} parallel)")
    sheets = write_sheets(runs, args, label) if args.sheet else []
    result = {
        "settings": {
            "objects": args.objects,
            "seeds": args.seeds,
            "methods": args.methods,
            "supervision": args.supervision,
            "start": args.start,
            "truth_background": args.truth_background,
            "overrides": args.overrides,
            "tag": args.tag,
            "eval_res": args.eval_res,
            "config": probe.to_dict(),
            "quick": args.quick,
        },
        "machine": {
            "device": args.device,
            "torch": torch.__version__,
            "jobs": args.jobs,
            "threads": args.threads,
            "platform": platform.platform(),
        },
        "wall_s": round(wall, 1),
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "tile"} for r in runs],
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}" + "".join(f" and {p}" for p in sheets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
