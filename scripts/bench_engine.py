"""Per-step cost of score distillation, split into render, encode (VAE), guidance forward, backward, optimizer.

    .venv/bin/python scripts/bench_engine.py                   # tiny latent + tiny pixel models, CPU
    .venv/bin/python scripts/bench_engine.py --gpu-sd21-size   # SD 2.1-base architecture, random weights, fp16

Prints a table and writes JSON (default bench_results/engine.json). The figure of merit is the ratio
step time / guidance-forward time: how much the rest of the engine adds to the UNet call it cannot avoid
(target <= 1.5 at default settings for a real-size model). With tiny random models the UNet is almost free,
so the ratio there says how heavy the field and renderer are, not how the real run behaves.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Before torch loads: OpenMP's busy-waiting threads slow torch down many times over on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from backend.cli import parse_overrides  # noqa: E402
from backend.config import GenerationConfig, with_overrides  # noqa: E402
from backend.engine.optimize import DistillationRun, StepTimer  # noqa: E402
from backend.engine.prior import Prior, load_prior, resolve_device  # noqa: E402
from backend.engine.tiny_prior import make_tiny_prior, tiny_clip_tokenizer  # noqa: E402
from backend.fileio import write_json_atomic  # noqa: E402

PARTS = ("render", "encode", "guidance", "backward", "optimizer")


def sd21_base_prior(device: torch.device) -> Prior:
    """Stable Diffusion 2.1-base's UNet, VAE and text encoder architectures with random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=77,
            vocab_size=49408,
            hidden_act="gelu",
            projection_dim=512,
        )
    )
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    for module in (unet, vae, text):
        module.requires_grad_(False).eval()
    unet.to(device, dtype)
    vae.to(device, dtype)
    return Prior("sd21-base-architecture", unet, text, tiny_clip_tokenizer(), scheduler, vae, device, dtype)


def measure(
    name: str,
    prior: Prior,
    cfg: GenerationConfig,
    device: torch.device,
    warmup: int,
    steps: int,
    first: int = 0,
) -> dict:
    timer = StepTimer(enabled=False, device=device)
    run = DistillationRun(cfg, prior, device, timer=timer)
    for i in range(first, first + warmup):
        run.step(i)
    timer.enabled = True
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(first + warmup, first + warmup + steps):
        run.step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = (time.perf_counter() - start) / steps
    per_part = {k: timer.totals.get(k, 0.0) / steps for k in PARTS}
    row = {
        "model": name,
        "variant": variant_name(cfg),
        "method": cfg.method,
        "render_size": cfg.render_size,
        "step_s": wall,
        "steps_per_s": 1.0 / wall,
        **{f"{k}_s": v for k, v in per_part.items()},
        "step_over_guidance": wall / per_part["guidance"] if per_part["guidance"] else None,
    }
    if device.type == "cuda":
        row["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def variant_name(cfg: GenerationConfig) -> str:
    return getattr(cfg, "_variant", "default")


def parse_variant(text: str) -> tuple[str, dict]:
    """'sdf:geometry=sdf;lr_mlp=0.01' -> ("sdf", {"geometry": "sdf", "lr_mlp": 0.01})."""
    name, _, settings = text.partition(":")
    return name, parse_overrides([item for item in settings.split(";") if item])


def print_table(rows: list[dict]) -> None:
    head = [
        "model",
        "variant",
        "method",
        "size",
        "step ms",
        "steps/s",
        *[f"{p} ms" for p in PARTS],
        "step/guid",
    ]
    print(" | ".join(f"{h:>10}" for h in head))
    for r in rows:
        cells = [
            r["model"][:10],
            r["variant"][:10],
            r["method"],
            r["render_size"],
            f"{r['step_s'] * 1e3:.1f}",
            f"{r['steps_per_s']:.2f}",
        ]
        cells += [f"{r[f'{p}_s'] * 1e3:.1f}" for p in PARTS]
        cells.append(f"{r['step_over_guidance']:.2f}" if r["step_over_guidance"] else "-")
        print(" | ".join(f"{c:>10}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", default="tp-sds,asd", help="comma-separated methods to time")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--demo", action="store_true", help="also time the built-in demo prior at its defaults"
    )
    parser.add_argument(
        "--gpu-sd21-size",
        action="store_true",
        help="time SD 2.1-base's architecture (random weights) at 64x64, fp16",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[;KEY=VALUE]",
        help="also time these settings beside the defaults, e.g. --variant 'sdf:geometry=\"sdf\"' (values JSON)",
    )
    parser.add_argument(
        "--first-step", type=int, default=0, help="time steps from here (e.g. 100: after the albedo warm-up)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "engine.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        priors: list[tuple[str, Prior, dict]] = []
        if args.gpu_sd21_size:
            priors.append(("sd21-base", sd21_base_prior(device), {"render_size": 64}))
        else:
            for pixel in (False, True):
                path = make_tiny_prior(Path(tmp) / ("pixel" if pixel else "latent"), pixel=pixel)
                priors.append(("tiny-" + ("pixel" if pixel else "latent"), load_prior(str(path), device), {}))
            if args.demo:
                priors.append(("demo", load_prior(None, device), {}))
        variants = [("default", {})] + [parse_variant(v) for v in args.variant]
        for name, prior, overrides in priors:
            for method in methods:
                for variant, changes in variants:
                    base = GenerationConfig(
                        prompt="a red cube", method=method, steps=10_000, device=device.type
                    )
                    cfg = with_overrides(base, overrides | changes)
                    object.__setattr__(cfg, "_variant", variant)
                    rows.append(measure(name, prior, cfg, device, args.warmup, args.steps, args.first_step))
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print_table(rows)
    write_json_atomic(args.out, {"device": str(device), "torch": torch.__version__, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
