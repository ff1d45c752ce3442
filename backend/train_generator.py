"""`python -m backend train-generator`: train a prompt-amortized generator on a list of prompts.

    python -m backend train-generator --demo-world --out gen/                 # 30 world objects, 6 held out
    python -m backend train-generator --prompts prompts.txt --method asd --out gen/
    torchrun --nproc_per_node 2 -m backend train-generator --demo-world --out gen/   # data-parallel
    python -m backend train-generator --out gen/ --resume                     # continue after Ctrl-C

`--out` becomes a generator folder (`backend.engine.generator`: `generate --generator gen/` uses it) and
holds the training's own files: `train_state.pt` (everything `--resume` needs, written atomically every
`--checkpoint-every` steps, at the end and on Ctrl-C), `train_log.json` and `loss.png` (the loss curve).
Process 0 writes; with several processes each draws prompts from its own shard (see `engine/amortized.py`).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from backend.errors import DreamsmithError

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.json"
CURVE_FILE = "loss.png"
STATE_FORMAT = "dreamsmith-generator-training/1"
# --minutes: steps timed before the step count is fixed, and the share of the budget kept in reserve.
CALIBRATION_STEPS = 30
TIME_MARGIN = 0.05
# Held out of the demo generator's training: one pair per shape and per colour, so that every shape and
# every colour is still seen in training, with other partners (a Latin-square diagonal).
DEMO_HELD_OUT = (
    "a purple sphere",
    "an orange cube",
    "a red cylinder",
    "a green cone",
    "a blue torus",
    "a yellow house",
)
# Settings of a training that a resume must not change (the rest of the options may be repeated as they were).
DEFAULTS: dict[str, Any] = {
    "method": "asd",
    "model": None,
    "steps": 3000,
    "minutes": None,
    "prompts_per_step": 8,
    "lr": 2e-3,
    "lr_decay": 1.0,
    "seed": 0,
    "supervision": "prior",
    "overrides": {},
    "generator": {},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--prompts",
        type=Path,
        default=None,
        metavar="FILE",
        help="training prompts: a text file with one per line (# comments), or ScaleDreamer's JSON prompt "
        'library {"train": [...], "val": [...]} (val: held out)',
    )
    source.add_argument(
        "--demo-world",
        action="store_true",
        help=f"the demo world's 36 objects; unless --hold-out says otherwise, {len(DEMO_HELD_OUT)} "
        "shape x colour pairs are held out: " + ", ".join(DEMO_HELD_OUT),
    )
    parser.add_argument(
        "--hold-out",
        nargs="*",
        default=None,
        metavar="PROMPT",
        help="prompts kept out of training (recorded in the generator for the benchmark); none: hold out nothing",
    )
    parser.add_argument("--out", type=Path, required=True, help="the generator folder to write")
    parser.add_argument("--resume", action="store_true", help="continue the training saved in --out")
    parser.add_argument(
        "--method",
        default=None,
        help=f"score distillation method (default {DEFAULTS['method']}): asd, sds, csd, ...",
    )
    parser.add_argument("--model", default=None, help="the prior to distill (default: the demo prior)")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"training steps (default {DEFAULTS['steps']})"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="a time budget instead of --steps: the step count is fixed from the speed of the first "
        f"{CALIBRATION_STEPS} steps so that the training ends within it",
    )
    parser.add_argument(
        "--prompts-per-step",
        type=int,
        default=None,
        help=f"prompts rendered per step, over all processes (default {DEFAULTS['prompts_per_step']})",
    )
    parser.add_argument(
        "--lr", type=float, default=None, help=f"Adam learning rate (default {DEFAULTS['lr']})"
    )
    parser.add_argument(
        "--lr-decay",
        type=float,
        default=None,
        help=f"the learning rate at the last step as a fraction of --lr, decayed exponentially (default "
        f"{DEFAULTS['lr_decay']}: constant)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument(
        "--supervision",
        default=None,
        choices=("prior", "truth"),
        help="truth (demo world only): exact renders of the true objects instead of the prior, the ceiling",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a generation setting the training uses (render_size, lambda_eikonal, camera.distance, ...)",
    )
    parser.add_argument(
        "--generator-set",
        dest="generator_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the generator's architecture: base_resolution, base_channels, field.resolution, "
        "field.channels, field.hidden_dim, field.beta, ...",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=250, help="steps between checkpoints (0: end only)"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per process (0: torch's choice)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (a line per checkpoint)")


def read_prompts(path: Path) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts) from a text file or a ScaleDreamer-style JSON library."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DreamsmithError(f"cannot read the prompts file {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DreamsmithError(f"{path} is not valid JSON ({exc})") from None
        if isinstance(data, list):
            data = {"train": data}
        if not isinstance(data, dict) or not isinstance(data.get("train"), list):
            raise DreamsmithError(f'{path}: expected a list of prompts or {{"train": [...], "val": [...]}}')
        train = [str(p).strip() for p in data["train"] if str(p).strip()]
        held = [str(p).strip() for p in data.get("val", data.get("test", [])) or [] if str(p).strip()]
        return train, held
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")], []


def training_prompts(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from backend import demo_world

    if args.demo_world:
        family = [obj.prompt for obj in demo_world.all_objects()]
        held = list(DEMO_HELD_OUT) if args.hold_out is None else list(args.hold_out)
    elif args.prompts is not None:
        family, file_held = read_prompts(args.prompts)
        held = file_held if args.hold_out is None else list(args.hold_out)
        family = family + [p for p in file_held if p not in family]
    else:
        raise DreamsmithError("give the prompts: --prompts FILE or --demo-world")
    train = [p for p in dict.fromkeys(family) if p not in set(held)]
    if not train:
        raise DreamsmithError("no training prompts left after --hold-out")
    for p in train:
        if len(p) > 500:
            raise DreamsmithError(f"prompt too long (over 500 characters): {p[:40]!r}...")
    return train, held


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    from backend.cli import parse_overrides

    given: dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "method",
            "model",
            "steps",
            "minutes",
            "prompts_per_step",
            "lr",
            "lr_decay",
            "seed",
            "supervision",
        )
        if getattr(args, k) is not None
    }
    if "lr" in given and not given["lr"] > 0:
        raise DreamsmithError(f"--lr must be above 0 (got {given['lr']})")
    if "lr_decay" in given and not 0 < given["lr_decay"] <= 1:
        raise DreamsmithError(
            f"--lr-decay must be in (0, 1]: the rate at the last step as a fraction of --lr (got {given['lr_decay']})"
        )
    if args.overrides:
        given["overrides"] = parse_overrides(args.overrides)
    if args.generator_overrides:
        given["generator"] = parse_overrides(args.generator_overrides)
    return given


def settings_for(args: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The training's settings: the saved ones when resuming (options may repeat them, not change them;
    --steps may grow), else the defaults with the options given."""
    given = _given_settings(args)
    if saved is not None:  # a training saved before a setting existed ran at its default
        saved = {**DEFAULTS, **saved}
    if saved is None:
        if "minutes" in given and "steps" in given:
            raise DreamsmithError("give --steps or --minutes, not both")
        train, held = training_prompts(args)
        return {**DEFAULTS, **given, "prompts": train, "held_out": held}
    if args.demo_world or args.prompts is not None:
        train, held = training_prompts(args)
        if train != saved["prompts"]:
            raise DreamsmithError(
                "the prompts differ from the saved training's; resume without changing them"
            )
    for key, value in given.items():
        if key not in ("steps", "minutes") and value != saved.get(key):
            raise DreamsmithError(
                f"--{key.replace('_', '-')} cannot change when resuming (saved: {saved.get(key)!r})"
            )
    return {**saved, **({"steps": given["steps"]} if "steps" in given else {})}


def generator_config(settings: dict[str, Any], embedding_dim: int) -> Any:
    from backend.engine.generator import GeneratorConfig

    data: dict[str, Any] = {"embedding_dim": embedding_dim, "field": {}}
    for key, value in settings["generator"].items():
        head, _, tail = key.partition(".")
        if head == "field" and tail:
            data["field"][tail] = value
        elif key == "embedding_dim":
            raise DreamsmithError("generator setting embedding_dim comes from the prior's text encoder")
        else:
            data[key] = value
    try:
        return GeneratorConfig.from_dict(data)
    except TypeError as exc:
        raise DreamsmithError(f"unknown generator setting ({exc})") from None


def generation_config(settings: dict[str, Any]) -> Any:
    """The generation settings the training's parts come from (cameras, shading, regularizers, method)."""
    from backend.config import GenerationConfig, with_overrides

    base = {"method": settings["method"], "model": settings["model"], "seed": settings["seed"]}
    base["steps"] = min(int(settings["steps"]), 20000)
    cfg = with_overrides(GenerationConfig(prompt=settings["prompts"][0]), base | settings["overrides"])
    from dataclasses import replace

    return replace(cfg, steps=int(settings["steps"]))


# ---------------------------------------------------------------------------------------------------------
# Files


def loss_curve_png(steps: list[int], losses: list[float], title: str) -> bytes:
    """The loss per step (light) and its running mean (dark), log scale, as a PNG (PIL: no plotting library)."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 640, 360, 60, 16, 28, 36
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black")
    values = [(s, v) for s, v in zip(steps, losses, strict=True) if v > 0 and math.isfinite(v)]
    if len(values) < 2:
        draw.text((left, h // 2), "not enough steps yet", fill="black")
    else:
        xs, ys = [s for s, _ in values], [math.log10(v) for _, v in values]
        k = max(1, min(200, len(ys) // 20))
        smooth = [
            sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))
        ]
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        y0, y1 = min(ys), max(max(ys), min(ys) + 1e-6)

        def at(x: float, y: float) -> tuple[float, float]:
            return (
                left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom),
            )

        draw.rectangle([left, top, w - right, h - bottom], outline="black")
        draw.line([at(x, y) for x, y in zip(xs, ys, strict=True)], fill=(170, 190, 230), width=1)
        draw.line([at(x, y) for x, y in zip(xs, smooth, strict=True)], fill=(20, 60, 160), width=2)
        for frac in (0.0, 0.5, 1.0):
            y = y0 + frac * (y1 - y0)
            draw.text((4, at(x0, y)[1] - 6), f"{10**y:.3g}", fill="black")
            x = x0 + frac * (x1 - x0)
            draw.text((at(x, y0)[0] - 10, h - bottom + 6), f"{int(x)}", fill="black")
        draw.text((w // 2 - 40, h - 16), f"step (mean of {k} in blue)", fill="black")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


DENSITY_WORDS = {
    "volsdf": "a VolSDF signed distance",
    "softplus": "a softplus density",
    "exp": "an exp-activated density",
}


def model_card(settings: dict[str, Any], info: dict[str, Any]) -> str:
    held = settings["held_out"]
    density = DENSITY_WORDS.get(info["generator_config"]["field"]["density"], "a density")
    return f"""# Dreamsmith generator

A prompt-amortized text-to-3D generator (ScaleDreamer's setting): one network maps a prompt's pooled text
embedding to a triplane field ({density}
and an albedo) in a single forward pass (`backend/engine/generator.py`).
Use: `python -m backend generate "{settings["prompts"][0]}" --generator {info["folder"]}`.

- **Data**: {len(settings["prompts"])} training prompts{f"; held out: {', '.join(held)}" if held else ""}
  (`dreamsmith_generator.json`).
- **Guidance**: prior `{settings["model"] or "demo"}`, method `{settings["method"]}`
  (supervision: {settings["supervision"]}), {settings["prompts_per_step"]} prompts per step,
  Adam lr {settings["lr"]} (decayed to {settings["lr_decay"]} of it), seed {settings["seed"]}, settings {json.dumps(settings["overrides"]) or "{}"}.
- **Generator**: {info["parameters"] / 1e6:.2f} M parameters, {json.dumps(info["generator_config"])}.
- **Training**: {info["steps"]} steps in {info["minutes"]:.1f} minutes on {info["device"]}
  ({info["processes"]} process(es)): `{info["command"]}`.
- **Loss** (score distillation + regularizers; mean of the last 100 steps): {info["final_loss"]:.4g}.
  Curve: `loss.png`, `train_log.json`.
"""


def _save(
    out: Path,
    run: Any,
    settings: dict[str, Any],
    rows: list[dict[str, Any]],
    elapsed_s: float,
    rng_states: list[Any],
    command: str,
    device: Any,
) -> None:
    import torch

    from backend.engine.generator import GeneratorInfo, save_generator
    from backend.fileio import write_bytes_atomic, write_json_atomic

    state = run.state(rng_states) | {
        "format": STATE_FORMAT,
        "settings": settings,
        "log": rows,
        "elapsed_s": elapsed_s,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(out / STATE_FILE, buf.getvalue())
    recent = [r["loss"] for r in rows[-100:]]
    info = {
        "folder": str(out),
        "parameters": sum(p.numel() for p in run.generator.parameters()),
        "generator_config": run.generator.cfg.to_dict(),
        "steps": run.steps_done,
        "minutes": elapsed_s / 60.0,
        "device": str(device),
        "processes": run.procs.world,
        "command": command,
        "final_loss": sum(recent) / len(recent) if recent else float("nan"),
    }
    gen_info = GeneratorInfo(
        prompts=settings["prompts"],
        held_out=settings["held_out"],
        prior=settings["model"] or "demo",
        method=settings["method"],
        steps=run.steps_done,
        extra={
            "minutes": round(info["minutes"], 2),
            "command": command,
            "supervision": settings["supervision"],
        },
    )
    save_generator(out, run.generator, run.embedder, gen_info, model_card(settings, info))
    every = max(1, len(rows) // 5000)
    write_json_atomic(out / LOG_FILE, {"info": info, "settings": settings, "curve": rows[::every]})
    title = (
        f"{settings['method']} generator training loss ({run.steps_done} steps, {info['minutes']:.1f} min)"
    )
    write_bytes_atomic(
        out / CURVE_FILE, loss_curve_png([r["step"] for r in rows], [r["loss"] for r in rows], title)
    )


def fix_steps(settings: dict[str, Any], run: Any, per_step: float, elapsed_s: float, procs: Any) -> Any:
    """--minutes: the step count that ends the training within the budget (elapsed_s of it spent) at
    `per_step` seconds (process 0's measure, shared), written into the settings and the run's config."""
    from dataclasses import replace

    import torch

    left = float(settings["minutes"]) * 60.0 * (1.0 - TIME_MARGIN) - elapsed_s
    steps = torch.tensor([run.steps_done + max(1, int(left / per_step))], dtype=torch.long)
    if procs.distributed:
        torch.distributed.broadcast(steps, 0)
    settings["steps"] = min(int(steps.item()), 1_000_000)
    settings["steps_fixed"] = True
    run.cfg = replace(run.cfg, steps=settings["steps"])
    if procs.main:
        print(
            f"\n{per_step:.2f} s per step: {settings['steps']} steps fit in {settings['minutes']:g} minutes",
            file=sys.stderr,
            flush=True,
        )
    return run.cfg


def load_state(out: Path) -> dict[str, Any]:
    import torch

    path = out / STATE_FILE
    if not path.is_file():
        raise DreamsmithError(f"nothing to resume: {path} does not exist (train without --resume first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DreamsmithError(f"{path} is not a readable training state ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DreamsmithError(f"{path} is not a Dreamsmith generator training state")
    return state


# ---------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """The command; returns the exit status (0, 1 on a training error, 2 on bad input, 130 on Ctrl-C)."""
    import torch

    from backend.engine.amortized import (
        AmortizedRun,
        PerPromptSupervision,
        Processes,
        gather_rng_states,
        init_processes,
        mean_over_processes,
    )
    from backend.engine.generator import TextEmbedder
    from backend.engine.prior import load_prior, resolve_device
    from backend.errors import ModelLoadError

    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    procs = Processes()
    try:
        device = resolve_device(args.device)
        procs = init_processes(device)
        if device.type == "cuda" and procs.distributed:
            device = torch.device("cuda", procs.rank % torch.cuda.device_count())
        saved = load_state(out) if args.resume else None
        if saved is None and (out / STATE_FILE).exists():
            raise DreamsmithError(
                f"{out} holds a training already: pass --resume to continue it, or another --out"
            )
        settings = settings_for(args, saved["settings"] if saved else None)
        if settings["supervision"] == "truth" and not args.demo_world and saved is None:
            raise DreamsmithError("--supervision truth needs --demo-world (the world has exact renders)")
        cfg = generation_config(settings)
        prior = load_prior(settings["model"], device)
        embedder = TextEmbedder(prior.tokenizer, prior.text_encoder)
        supervision = None
        if settings["supervision"] == "truth":
            from backend import demo_world
            from backend.evaluation.supervision import PhotometricTruth

            supervision = PerPromptSupervision(
                {
                    p: PhotometricTruth(demo_world.parse_prompt(p), cfg.ambient)
                    for p in procs.shard(settings["prompts"])
                }
            )
        run_ = AmortizedRun(
            cfg,
            generator_config(settings, embedder.dim),
            settings["prompts"],
            embedder,
            prior,
            device,
            prompts_per_step=int(settings["prompts_per_step"]),
            lr=float(settings["lr"]),
            lr_decay=float(settings["lr_decay"]),
            procs=procs,
            supervision=supervision,
        )
        rows: list[dict[str, Any]] = []
        elapsed_before = 0.0
        if saved is not None:
            run_.restore(saved)
            rows = list(saved.get("log", []))
            elapsed_before = float(saved.get("elapsed_s", 0.0))
        if run_.steps_done >= cfg.steps:
            raise DreamsmithError(
                f"the saved training has done {run_.steps_done} steps already; pass --steps above that"
            )
    except (DreamsmithError, ModelLoadError) as exc:
        if procs.main:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
    command = "python -m backend train-generator " + shlex.join(argv if argv is not None else sys.argv[2:])
    start = time.perf_counter()

    def checkpoint() -> None:
        rngs = gather_rng_states(run_)
        if procs.main:
            _save(
                out, run_, settings, rows, elapsed_before + time.perf_counter() - start, rngs, command, device
            )

    bar = None
    if procs.main and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=run_.steps_done, unit="step", dynamic_ncols=True, desc="training")
    if procs.main:
        print(
            f"training a generator on {len(settings['prompts'])} prompts ({procs.world} process(es), "
            f"{run_.prompts_per_step} prompts per step each), method {settings['method']}, {cfg.steps} steps",
            file=sys.stderr,
            flush=True,
        )
    # --minutes: the step count is still open until the first steps have been timed.
    calibrate = settings.get("minutes") is not None and not settings.get("steps_fixed")
    first = run_.steps_done
    try:
        i = run_.steps_done
        while i < cfg.steps:
            stats = run_.step(i)
            loss = mean_over_processes(stats.loss, procs)
            t = next((t for t in stats.ts if t is not None), None)
            rows.append({"step": i + 1, "loss": round(loss, 6), "t": t})
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4g}", t=t, refresh=False)
                bar.update(1)
            done = i + 1
            if calibrate and done - first == CALIBRATION_STEPS:
                calibrate = False
                now = time.perf_counter() - start
                cfg = fix_steps(settings, run_, now / (done - first), elapsed_before + now, procs)
                if bar is not None:
                    bar.total = cfg.steps
                    bar.refresh()
            if args.checkpoint_every and done % args.checkpoint_every == 0 and done < cfg.steps:
                checkpoint()
                if bar is None and procs.main:
                    print(f"step {done}/{cfg.steps}: loss {loss:.4g}", file=sys.stderr, flush=True)
            i += 1
        checkpoint()
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        checkpoint()
        if procs.main:
            print(
                f"interrupted at step {run_.steps_done}; continue with --out {out} --resume", file=sys.stderr
            )
        return 130
    except DreamsmithError as exc:
        if bar is not None:
            bar.close()
        if procs.main:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    if bar is not None:
        bar.close()
    if procs.main:
        minutes = (elapsed_before + time.perf_counter() - start) / 60
        print(f"done: {cfg.steps} steps in {minutes:.1f} min; generator in {out}", flush=True)
    if procs.distributed:
        torch.distributed.destroy_process_group()
    return 0
