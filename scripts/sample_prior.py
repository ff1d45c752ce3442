"""Draw 2D samples from a prior (the demo prior by default) and measure whether they show what was asked.

    python scripts/sample_prior.py [--model DIR] [--prompts "a red cube" ...] [--views front side]
        [--samples 1] [--steps 50] [--guidance 7.5] [--seed 0] [--out DIR]

Samples use DDIM with classifier-free guidance, through the engine's own loader (`load_prior`) and text
encoding (view-dependent prompts "a red cube, front view"). Each sample is classified by a small
classifier fitted on the demo world's renders: colour = nearest class centroid of the foreground's
chromaticity, shape = nearest neighbours of the foreground silhouette. The classifier's own accuracy on
fresh renders is printed too (its ceiling). Writes grid.png and samples.json to --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend import demo_world  # noqa: E402
from backend.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# Classifier fitted on the world's renders


MIN_COVERAGE, MAX_COVERAGE = 0.03, 0.75  # world renders cover 9-58% of the frame


def foreground(images: torch.Tensor) -> torch.Tensor:
    """bool [B, H, W]: pixels clearly not white (every object colour has a channel far below 1)."""
    return images.amin(dim=-1) < 0.7


def features(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images [B, H, W, 3] in [0, 1] -> (chromaticity of the foreground [B, 3], silhouette [B, H*W])."""
    mask = foreground(images)
    m = mask[..., None].float()
    mean = (images * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp(min=1)
    chroma = mean / mean.sum(-1, keepdim=True).clamp(min=1e-6)
    return chroma, mask.flatten(1).float()


class WorldClassifier:
    """Colour by nearest chromaticity centroid, shape by k-nearest silhouettes, both from world renders."""

    def __init__(self, views_per_object: int = 48, seed: int = 1234, k: int = 5) -> None:
        self.k = k
        gen = torch.Generator().manual_seed(seed)
        chromas, sils, shapes, colours = [], [], [], []
        for obj in demo_world.all_objects():
            batch = demo_world.render_views(obj, views_per_object, 32, gen)
            c, s = features(batch.images)
            chromas.append(c)
            sils.append(s)
            shapes += [obj.shape] * views_per_object
            colours += [obj.colour] * views_per_object
        chroma = torch.cat(chromas)
        self.sils = torch.cat(sils)
        self.shapes = np.array(shapes)
        self.colour_names = list(demo_world.COLOURS)
        colour_arr = np.array(colours)
        self.centroids = torch.stack(
            [chroma[torch.from_numpy(colour_arr == c)].mean(0) for c in self.colour_names]
        )

    def predict(self, images: torch.Tensor) -> tuple[list[str], list[str]]:
        """images [B, H, W, 3] -> (colour names, shape names)."""
        chroma, sil = features(images)
        colour_idx = torch.cdist(chroma, self.centroids).argmin(dim=1)
        dist = torch.cdist(sil, self.sils)  # [B, N]
        nearest = dist.topk(self.k, largest=False).indices.numpy()
        coverage = sil.mean(dim=1)
        # Not an object on a white background (noise, a blank or a filled frame): neither colour nor shape.
        valid = ((coverage > MIN_COVERAGE) & (coverage < MAX_COVERAGE)).tolist()
        shapes, colours = [], []
        for row, ci, ok in zip(nearest, colour_idx.tolist(), valid, strict=True):
            names, counts = np.unique(self.shapes[row], return_counts=True)
            shapes.append(str(names[counts.argmax()]) if ok else "none")
            colours.append(self.colour_names[ci] if ok else "none")
        return colours, shapes


def classifier_ceiling(clf: WorldClassifier, per_object: int = 8, seed: int = 99) -> dict[str, float]:
    """The classifier's accuracy on fresh renders (what a perfect prior would score)."""
    gen = torch.Generator().manual_seed(seed)
    ok_c = ok_s = n = 0
    for obj in demo_world.all_objects():
        batch = demo_world.render_views(obj, per_object, 32, gen)
        colours, shapes = clf.predict(batch.images)
        ok_c += sum(c == obj.colour for c in colours)
        ok_s += sum(s == obj.shape for s in shapes)
        n += per_object
    return {"colour": ok_c / n, "shape": ok_s / n}


# ---------------------------------------------------------------------------------------------------
# Sampling


@torch.no_grad()
def ddim_sample(
    prior, cond: torch.Tensor, uncond: torch.Tensor, steps: int, guidance: float, gen
) -> torch.Tensor:
    """DDIM (eta 0) with classifier-free guidance. cond [B, L, D], uncond [1, L, D] -> images [B, H, W, 3]."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(
        prior.scheduler.config, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing"
    )
    sched.set_timesteps(steps)
    b = cond.shape[0]
    size = prior.unet.config.sample_size
    x = torch.randn(b, prior.channels, size, size, generator=gen).to(prior.device)
    uncond = uncond.expand(b, -1, -1)
    for t in sched.timesteps:
        eps = prior.predict_noise(torch.cat([x, x]), t, torch.cat([uncond, cond]))
        eps_u, eps_c = eps.chunk(2)
        x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def grid_png(images: torch.Tensor, labels: list[str], cols: int, scale: int = 3) -> bytes:
    import io

    from PIL import Image, ImageDraw

    n, h, w, _ = images.shape
    rows = (n + cols - 1) // cols
    label_w = 150
    canvas = Image.new("RGB", (label_w + cols * w * scale, rows * h * scale), "white")
    draw = ImageDraw.Draw(canvas)
    arr = (images.numpy() * 255).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = Image.fromarray(arr[i]).resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(tile, (label_w + c * w * scale, r * h * scale))
        if c == 0:
            draw.text((4, r * h * scale + h * scale // 2 - 6), labels[i], fill="black")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="diffusers folder or hub id (default: the demo prior)")
    parser.add_argument("--prompts", nargs="*", default=None, help="default: every object of the demo world")
    parser.add_argument("--views", nargs="*", default=["front", "side", "back"])
    parser.add_argument("--samples", type=int, default=1, help="samples per prompt and view")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dreamsmith_samples"))
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    from backend.engine.prior import load_prior

    t0 = time.time()
    prior = load_prior(args.model, torch.device(args.device))
    prompts = args.prompts or [o.prompt for o in demo_world.all_objects()]
    gen = torch.Generator().manual_seed(args.seed)

    images, records = [], []
    uncond = None
    for prompt in prompts:
        emb = prior.encode_prompts(prompt)
        uncond = emb.uncond
        cond = torch.cat([emb.views[v] for v in args.views for _ in range(args.samples)])
        images.append(ddim_sample(prior, cond, uncond, args.steps, args.guidance, gen))
        for v in args.views:
            records += [{"prompt": prompt, "view": v} for _ in range(args.samples)]
    samples = torch.cat(images)
    sample_s = time.time() - t0

    clf = WorldClassifier()
    ceiling = classifier_ceiling(clf)
    colours, shapes = clf.predict(samples)
    scored = 0
    hits = {"colour": 0, "shape": 0, "both": 0}
    for rec, c, s in zip(records, colours, shapes, strict=True):
        rec |= {"pred_colour": c, "pred_shape": s}
        try:
            want = demo_world.parse_prompt(rec["prompt"])
        except ValueError:
            continue  # not a demo-world prompt: sampled, not scored
        scored += 1
        rec |= {"colour_ok": c == want.colour, "shape_ok": s == want.shape}
        hits["colour"] += c == want.colour
        hits["shape"] += s == want.shape
        hits["both"] += c == want.colour and s == want.shape
    acc = {k: v / scored for k, v in hits.items()} if scored else {}

    cols = len(args.views) * args.samples
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / "grid.png", grid_png(samples, [r["prompt"] for r in records], cols))
    result = {
        "model": prior.name,
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "n_samples": len(records),
        "sampling_seconds": round(sample_s, 1),
        "accuracy": acc,
        "classifier_accuracy_on_renders": ceiling,
        "samples": records,
    }
    write_json_atomic(args.out / "samples.json", result)
    print(
        f"{len(records)} samples of {prior.name} ({args.steps} DDIM steps, CFG {args.guidance}) in {sample_s:.0f}s"
    )
    print(f"classifier on true renders: colour {ceiling['colour']:.1%}, shape {ceiling['shape']:.1%}")
    if acc:
        print(
            f"samples showing the asked colour {acc['colour']:.1%}, shape {acc['shape']:.1%}, "
            f"both {acc['both']:.1%} ({scored} scored)"
        )
    print(f"wrote {args.out / 'grid.png'} and {args.out / 'samples.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
