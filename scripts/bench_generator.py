"""The generator benchmark: a prompt-amortized generator's instant results against per-prompt optimization.

    .venv/bin/python scripts/bench_generator.py --generator demo --per-prompt bench_results/world.json
    .venv/bin/python scripts/bench_generator.py --generator demo --compare sds=/tmp/gen_sds csd=/tmp/gen_csd
    .venv/bin/python scripts/bench_generator.py --generator demo --refine --timing

Sections (each measured in this run, with the world benchmark's own metrics, `backend.evaluation`):

- accuracy: every object of the generator's family (its training prompts and its held-out ones) made in one
  forward pass, exported as `generate --generator` exports it, and scored by `metrics.score_mesh` against
  the truth (`truth.Truth`): right/wrong, mesh IoU, surface error; summarised separately for the training
  and the held-out objects. `--compare NAME=DIR` scores more generators the same way (e.g. the same
  generator trained with SDS or CSD).
- per-prompt baseline: `--per-prompt JSON` reads the runs of `scripts/bench_world.py` (per-prompt
  optimization at default settings) and splits them into the same two sets.
- `--refine`: warm start. For each of `--refine-objects` (default: the held-out objects), a cold per-prompt
  run at default settings and a Refine (the same run started from the generator's field), both scored
  every `--eval-every` steps (field IoU, as `bench_world.py --eval-every`); the number of Refine steps to
  reach the IoU the cold run has at its last step.
- `--timing`: the generator's forward (text encoder + decoder), and prompt -> files (mesh.glb, mesh.npz,
  preview.png, field.pt) through `pipeline.generate` in this process (generator loaded, median of 3),
  and the same through a fresh `python -m backend generate --generator` process (imports included).

Prints tables, writes JSON (`--out`) and a contact sheet per generator (`--sheet`): every object from two
sides, labelled, wrong ones framed red, held-out ones marked.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend import demo_world  # noqa: E402
from backend.cli import parse_overrides  # noqa: E402
from backend.config import GenerationConfig, with_overrides  # noqa: E402
from backend.engine.generator import LoadedGenerator, load_generator  # noqa: E402
from backend.errors import DreamsmithError  # noqa: E402
from backend.evaluation import metrics  # noqa: E402
from backend.evaluation.thumbnails import Tile, contact_sheet, mesh_tile  # noqa: E402
from backend.evaluation.truth import Truth  # noqa: E402
from backend.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402

_TRUTHS: dict[tuple[str, str, int], Truth] = {}


def truth_of(prompt: str, eval_res: int) -> Truth:
    obj = demo_world.parse_prompt(prompt)
    key = (obj.shape, obj.colour, eval_res)
    if key not in _TRUTHS:
        _TRUTHS[key] = Truth(obj, eval_res)
    return _TRUTHS[key]


def family(loaded: LoadedGenerator) -> list[tuple[str, bool]]:
    """(prompt, held_out) for every world object the generator was trained on or held out from."""
    out = [(p, False) for p in loaded.info.prompts] + [(p, True) for p in loaded.info.held_out]
    return [(p, h) for p, h in out if _is_world_prompt(p)]


def _is_world_prompt(prompt: str) -> bool:
    try:
        demo_world.parse_prompt(prompt)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# Accuracy


def score_generator(loaded: LoadedGenerator, args: argparse.Namespace, label: str) -> list[dict[str, Any]]:
    """Every family object made in one forward pass, exported, scored."""
    from backend.engine.export import export_result

    cfg = with_overrides(GenerationConfig(prompt="x"), args.overrides)
    records = []
    for prompt, held in family(loaded):
        truth = truth_of(prompt, args.eval_res)
        obj = truth.obj
        start = time.perf_counter()
        field = loaded.field_for(prompt)
        record: dict[str, Any] = {
            "generator": label,
            "prompt": prompt,
            "shape": obj.shape,
            "colour": obj.colour,
        }
        record["held_out"] = held
        with tempfile.TemporaryDirectory() as tmp:
            try:
                export_result(field, cfg.export, Path(tmp))
            except DreamsmithError as exc:
                records.append(record | {"ok": False, "error": str(exc), "tile": None})
                continue
            record["seconds"] = round(time.perf_counter() - start, 3)
            record |= metrics.score_mesh(tmp, truth)
            vertices, faces, colours = metrics.load_mesh(tmp)
            record["tile"] = mesh_tile(vertices, faces, colours, args.tile) if args.sheet else None
        records.append(record)
        print(
            f"  {label}: {'ok   ' if record.get('ok') else 'WRONG'} {prompt:<19} {'held-out' if held else 'train   '} "
            f"IoU {record.get('mesh_iou', 0):.3f} best {record.get('best_shape', '-'):<8} "
            f"colour {record.get('mesh_colour_named', '-')}",
            flush=True,
        )
    return records


def _mean(values: list[Any]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


def block(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "objects": len(records),
        "accuracy": sum(bool(r.get("ok")) for r in records) / max(len(records), 1),
        "mesh_iou": _mean([r.get("mesh_iou", 0.0) for r in records]),
        "chamfer": _mean([r.get("chamfer", float("nan")) for r in records]),
        "normal_deg": _mean([r.get("normal_deg", float("nan")) for r in records]),
        "colour_error": _mean([r.get("mesh_colour_error", float("nan")) for r in records]),
    }


def split_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "train": block([r for r in records if not r["held_out"]]),
        "held_out": block([r for r in records if r["held_out"]]),
    }


def per_prompt_records(
    path: Path, held_out: set[str], train: set[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """bench_world.py's runs (one method: its first), labelled with the generator's two sets."""
    import json

    data = json.loads(path.read_text())
    runs = data["runs"]
    method = data["settings"]["methods"][0]
    out = []
    for r in runs:
        if r["method"] != method or r["prompt"] not in held_out | train:
            continue
        out.append(r | {"held_out": r["prompt"] in held_out, "generator": f"per-prompt {method}"})
    return out, {"file": str(path), "method": method, "steps": data["settings"]["config"]["steps"]}


def _f(value: Any, fmt: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return "nan" if not math.isfinite(value) else format(value, fmt)


def print_accuracy(rows: list[tuple[str, dict[str, Any]]]) -> None:
    head = f"{'':<22} {'set':<9} {'objects':>7} {'accuracy':>8} {'meshIoU':>7} {'chamfer':>7} {'normal°':>7} {'colErr':>6}"
    print("\n" + head)
    print("-" * len(head))
    for label, summary in rows:
        for name in ("train", "held_out"):
            s = summary[name]
            if not s["objects"]:
                continue
            print(
                f"{label:<22} {name:<9} {s['objects']:>7} {s['accuracy']:>8.1%} {_f(s['mesh_iou']):>7} "
                f"{_f(s['chamfer'], '.4f'):>7} {_f(s['normal_deg'], '.1f'):>7} {_f(s['colour_error']):>6}"
            )


def write_sheet(records: list[dict[str, Any]], path: Path, title: str, args: argparse.Namespace) -> Path:
    tiles = []
    for r in records:
        image = (
            np.asarray(r["tile"], dtype=np.uint8)
            if r.get("tile") is not None
            else np.full((args.tile, 2 * args.tile, 3), 255, np.uint8)
        )
        lines = [
            f"{r['prompt']}{' (held out)' if r['held_out'] else ''}",
            f"IoU {_f(r.get('mesh_iou'), '.2f')} best {r.get('best_shape', '-')}",
            f"normal {_f(r.get('normal_deg'), '.0f')}° {r.get('mesh_colour_named', '-')}",
        ]
        tiles.append(Tile(image, lines, bool(r.get("ok"))))
    buf = io.BytesIO()
    contact_sheet(tiles, columns=args.columns, title=title).save(buf, format="PNG")
    return write_bytes_atomic(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------------
# Refine (warm start)


def refine_curves(
    loaded: LoadedGenerator, prompt: str, args: argparse.Namespace, prior: Any
) -> dict[str, Any]:
    """Field IoU every `eval_every` steps of a cold per-prompt run (to its last step), then of a Refine from
    the generator's field until it reaches the cold run's last IoU (or runs as many steps)."""
    from backend.engine.optimize import DistillationRun

    truth = truth_of(prompt, args.eval_res)
    cold_cfg = with_overrides(GenerationConfig(prompt=prompt), {"preview_every": 0} | args.overrides)
    refine_cfg = with_overrides(cold_cfg, args.refine_overrides)
    device = torch.device("cpu")
    out: dict[str, Any] = {"prompt": prompt, "steps": cold_cfg.steps}
    target = math.inf
    for kind in ("cold", "refine"):
        cfg = refine_cfg if kind == "refine" else cold_cfg
        start = time.perf_counter()
        geometry = loaded.field_for(prompt).train() if kind == "refine" else None
        run = DistillationRun(cfg, prior, device, geometry=geometry)
        curve = []
        if kind == "refine":
            curve.append({"step": 0, "iou": metrics.score_field(run.geometry, truth, cfg.export)["iou"]})
        eval_s = 0.0
        for i in range(cfg.steps):
            if curve and curve[-1]["iou"] >= target:
                break
            run.step(i)
            if (i + 1) % args.eval_every == 0 or i + 1 == cfg.steps:
                t0 = time.perf_counter()
                curve.append(
                    {"step": i + 1, "iou": metrics.score_field(run.geometry, truth, cfg.export)["iou"]}
                )
                eval_s += time.perf_counter() - t0
        out[kind] = {"curve": curve, "seconds": round(time.perf_counter() - start - eval_s, 1)}
        if kind == "cold":
            target = curve[-1]["iou"]
    out["cold_final_iou"] = target
    out["instant_iou"] = out["refine"]["curve"][0]["iou"]
    out["refine_steps_to_cold"] = next(
        (p["step"] for p in out["refine"]["curve"] if p["iou"] >= target), None
    )
    print(
        f"  refine {prompt:<19}: cold IoU {target:.3f} at step {cold_cfg.steps} ({out['cold']['seconds']:.0f} s); "
        f"instant {out['instant_iou']:.3f}; Refine reaches it at step {out['refine_steps_to_cold']} "
        f"({out['refine']['seconds']:.0f} s)",
        flush=True,
    )
    return out


# ---------------------------------------------------------------------------------------------------------
# Timing


def timing(name: str, loaded: LoadedGenerator, args: argparse.Namespace) -> dict[str, Any]:
    from backend.engine.generator import GENERATORS
    from backend.engine.pipeline import generate

    prompt = loaded.info.prompts[0]
    forward = []
    for _ in range(20):
        t0 = time.perf_counter()
        with torch.no_grad():
            loaded.generator.planes(loaded.embedder([prompt]))
        forward.append(time.perf_counter() - t0)
    field_s = []
    for _ in range(5):
        t0 = time.perf_counter()
        loaded.field_for(prompt)
        field_s.append(time.perf_counter() - t0)
    cfg = GenerationConfig(prompt=prompt, generator=name, device="cpu")
    GENERATORS.get(name)  # loaded once, as in a running service
    files_s = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            generate(cfg, tmp)
            files_s.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "backend",
                "generate",
                prompt,
                "--generator",
                name,
                "--out",
                tmp,
                "--device",
                "cpu",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        )
        cli_s = time.perf_counter() - t0
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
    result = {
        "prompt": prompt,
        "threads": torch.get_num_threads(),
        "forward_s": statistics.median(forward),
        "prompt_to_field_s": statistics.median(field_s),
        "prompt_to_files_s": statistics.median(files_s),
        "cli_cold_s": cli_s,
    }
    print(
        f"\ntiming ({result['threads']} thread(s)): generator forward (text encoder + decoder) "
        f"{result['forward_s'] * 1000:.1f} ms; prompt -> field {result['prompt_to_field_s'] * 1000:.1f} ms; "
        f"prompt -> files (in process) {result['prompt_to_files_s']:.2f} s; "
        f"`python -m backend generate --generator` from a fresh process {cli_s:.2f} s"
    )
    return result


# ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="demo", help="generator folder or 'demo' (default)")
    parser.add_argument("--label", default="generator", help="its name in the tables")
    parser.add_argument(
        "--compare", nargs="*", default=[], metavar="NAME=DIR", help="more generators scored the same way"
    )
    parser.add_argument("--per-prompt", type=Path, default=None, help="a bench_world.py JSON: the baseline")
    parser.add_argument("--refine", action="store_true", help="measure the warm start (cold run vs Refine)")
    parser.add_argument(
        "--refine-objects", nargs="*", default=None, help="prompts (default: the held-out ones)"
    )
    parser.add_argument("--eval-every", type=int, default=10, help="Refine/cold: field IoU every N steps")
    parser.add_argument("--timing", action="store_true", help="time the forward and prompt -> files")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a generation setting",
    )
    parser.add_argument(
        "--refine-set",
        dest="refine_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a generation setting of the Refine runs only (the cold runs keep --set's)",
    )
    parser.add_argument("--eval-res", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tile", type=int, default=96)
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "generator.json")
    parser.add_argument(
        "--sheet", type=Path, default=None, help="contact sheet PNG (default beside the JSON)"
    )
    parser.add_argument("--no-sheet", action="store_true")
    args = parser.parse_args(argv)
    args.overrides = parse_overrides(args.overrides)
    args.refine_overrides = parse_overrides(args.refine_overrides)
    args.sheet = None if args.no_sheet else (args.sheet or args.out.with_suffix(".png"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        generators = {args.label: (args.generator, load_generator(args.generator))}
        for item in args.compare:
            name, sep, path = item.partition("=")
            if not sep:
                raise DreamsmithError(f"--compare wants NAME=DIR, got {item!r}")
            generators[name] = (path, load_generator(path))
    except DreamsmithError as exc:
        print(f"bench_generator: {exc}", file=sys.stderr)
        return 2
    main_gen = generators[args.label][1]
    result: dict[str, Any] = {
        "generators": {
            k: {
                "path": p,
                "steps": g.info.steps,
                "method": g.info.method,
                "minutes": g.info.extra.get("minutes"),
            }
            for k, (p, g) in generators.items()
        },
        "held_out": main_gen.info.held_out,
        "settings": args.overrides,
        "refine_settings": args.refine_overrides,
        "machine": {"torch": torch.__version__, "threads": args.threads, "platform": platform.platform()},
    }
    start = time.perf_counter()
    summaries: list[tuple[str, dict[str, Any]]] = []
    records: list[dict[str, Any]] = []
    if not args.skip_accuracy:
        for label, (_, loaded) in generators.items():
            print(f"accuracy: {label}", flush=True)
            recs = score_generator(loaded, args, label)
            records += recs
            summaries.append((label, split_summary(recs)))
            if args.sheet is not None:
                path = (
                    args.sheet
                    if label == args.label
                    else args.sheet.with_name(f"{args.sheet.stem}_{label}.png")
                )
                s = summaries[-1][1]
                title = f"{label}: train {s['train']['accuracy']:.0%} right, held-out {s['held_out']['accuracy']:.0%} right"
                print(f"wrote {write_sheet(recs, path, title, args)}")
        if args.per_prompt is not None:
            train = set(main_gen.info.prompts)
            held = set(main_gen.info.held_out)
            recs, meta = per_prompt_records(args.per_prompt, held, train)
            result["per_prompt"] = meta
            summaries.append((f"per-prompt {meta['method']}", split_summary(recs)))
        print_accuracy(summaries)
        result["summary"] = dict(summaries)
        result["objects"] = [{k: v for k, v in r.items() if k != "tile"} for r in records]
    if args.refine:
        from backend.engine.prior import load_prior

        prior = load_prior(None, torch.device("cpu"))
        prompts = args.refine_objects or main_gen.info.held_out
        curves = [refine_curves(main_gen, p, args, prior) for p in prompts]
        steps = curves[0]["steps"] if curves else 0
        reached = [c["refine_steps_to_cold"] for c in curves]
        fractions = [(s if s is not None else float("inf")) / steps for s in reached]
        result["refine"] = {
            "objects": curves,
            "default_steps": steps,
            "median_steps_to_cold": statistics.median([s if s is not None else math.inf for s in reached])
            if reached
            else None,
            "median_fraction": statistics.median(fractions) if fractions else None,
            "within_third": sum(f <= 1 / 3 for f in fractions),
        }
        r = result["refine"]
        print(
            f"\nrefine: {len(curves)} objects; steps for Refine to reach the cold run's IoU at {steps}: "
            f"{reached}; median {r['median_steps_to_cold']} ({r['median_fraction']:.2f} of the cold steps); "
            f"within 1/3: {r['within_third']}/{len(curves)}"
        )
    if args.timing:
        result["timing"] = timing(args.generator, main_gen, args)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
