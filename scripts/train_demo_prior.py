"""Train the built-in demo prior: a small pixel-space text-to-image diffusion model on the demo world.

    python scripts/train_demo_prior.py [--minutes 55] [--device cpu] [--out backend/priors/demo]

Data: a fixed set of 32-pixel renders of `backend.demo_world` (every shape x colour, cameras drawn like
the engine's, captions "a red cube, front view"), rendered once and cached as .npz. Model: a diffusers
`UNet2DConditionModel` with cross-attention, a small `CLIPTextModel` trained jointly, a CLIP BPE tokenizer
built offline from the world's words, and Stable Diffusion's scaled-linear DDPM schedule (so the engine's
timestep math is the same as for SD). Classifier-free guidance dropout: 10% empty captions. The EMA
weights are saved in diffusers layout every few minutes (atomically), so a cut-off run is still usable.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend import demo_world  # noqa: E402
from backend.engine.tiny_prior import PIXEL_PIPELINE_CLASS, bytes_to_unicode  # noqa: E402
from backend.engine.views import VIEWS  # noqa: E402
from backend.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "backend" / "priors" / "demo"
DEFAULT_CACHE = Path(os.environ.get("DREAMSMITH_CACHE", Path(tempfile.gettempdir()) / "dreamsmith_cache"))
DATASET_VERSION = 1  # bump when demo_world's rendering changes
MAX_TOKENS = 77  # as CLIP / Stable Diffusion, so the engine's tokenizer call is the same
TEXT_DIM = 64
UNCOND_P = 0.1  # classifier-free guidance dropout
NO_VIEW_P = 0.05  # captions without a view suffix ("a red cube")
# Written beside the model as dreamsmith.json: score distillation with this prior works best without the
# largest timesteps (t_max 0.98 inflates non-spherical objects; the quality benchmark then, t_max 0.6: red cube IoU
# 0.39 -> 0.75 with tp-sds), and the SDS rule at guidance 3 instead of DreamFusion's 100 (this model's
# guided samples grow with the scale: silhouettes about 25% too large at 3, 40% at 7.5, so distillation at
# 100 swells shapes; bench_world --quick, tp-sds: accuracy 25% -> 50%, IoU 0.60 -> 0.73). The engine reads
# them when a run leaves t_max / guidance_scale unset.
# And one CPU thread: its steps are thousands of small operations, which a second thread only slows down.
RECOMMENDED: dict[str, object] = {"t_max": 0.6, "guidance_scale": {"sds": 3.0}, "cpu_threads": 1}

UNET_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=TEXT_DIM,
    attention_head_dim=4,
    norm_num_groups=8,
)
TEXT_CONFIG = dict(
    hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=2, num_attention_heads=4
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    prediction_type="epsilon",
)


# ---------------------------------------------------------------------------------------------------
# Tokenizer


def world_words() -> list[str]:
    words = ["a", "an", "the", "view", "of"] + list(VIEWS) + list(demo_world.COLOURS)
    for names in demo_world.SHAPE_WORDS.values():
        words += list(names)
    return list(dict.fromkeys(words))


def build_tokenizer(out_dir: Path):
    """CLIP BPE tokenizer for the world's words, built offline: vocab.json + merges.txt written by hand.

    The vocabulary holds every byte (alone and word-final, '</w>'), so any text tokenizes; the merges
    build each world word left to right into one word-final token, e.g. c u -> cu, cu b -> cub,
    cub e</w> -> cube</w>.
    """
    from transformers import CLIPTokenizer

    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in world_words():
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = (pieces[0], pieces[1])
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            if merge not in merges:
                merges.append(merge)
                tokens.append(pieces[0])
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    save_tokenizer(tok, out_dir, vocab, merges)
    tok = CLIPTokenizer.from_pretrained(out_dir)  # what the engine will load
    tok.bpe_files = (vocab, merges)
    return tok


def save_tokenizer(tok, out_dir: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """save_pretrained writes tokenizer.json; vocab.json + merges.txt too, for the classic CLIP loaders."""
    tok.save_pretrained(out_dir)
    write_json_atomic(out_dir / "vocab.json", vocab)
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    write_bytes_atomic(out_dir / "merges.txt", ("\n".join(lines) + "\n").encode("utf-8"))


def check_tokenizer(tok) -> None:
    """Round trip for every world word and caption, with no unknown tokens (words may take 1-3 tokens)."""
    unk = tok.unk_token_id
    for word in world_words():
        ids = tok(word, add_special_tokens=False).input_ids
        if unk in ids or tok.decode(ids).strip() != word:
            raise RuntimeError(f"tokenizer cannot spell {word!r}: {tok.convert_ids_to_tokens(ids)}")
    for obj in demo_world.all_objects():
        for view in VIEWS:
            text = demo_world.caption(obj, view)
            ids = tok(text).input_ids
            back = tok.decode(ids, skip_special_tokens=True).strip()
            if back.replace(" ,", ",") != text:
                raise RuntimeError(f"tokenizer round trip failed: {text!r} -> {back!r}")


# ---------------------------------------------------------------------------------------------------
# Data


def dataset_path(cache_dir: Path, n: int, size: int, seed: int) -> Path:
    return cache_dir / f"demo_world_v{DATASET_VERSION}_n{n}_s{size}_seed{seed}.npz"


def recaption(text: str) -> str:
    """A cached caption in the world's current wording ('a orange cube, side view' -> 'an orange ...')."""
    prompt, _, view = text.rpartition(", ")
    return demo_world.caption(demo_world.parse_prompt(prompt), view.removesuffix(" view"))


def load_or_render_dataset(cache_dir: Path, n: int, size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """uint8 images [n, size, size, 3] and captions, rendered once from the demo world and cached."""
    path = dataset_path(cache_dir, n, size, seed)
    if path.is_file():
        data = np.load(path)
        return data["images"], [recaption(str(c)) for c in data["captions"]]
    t0 = time.time()
    print(f"rendering {n} images of {size}px to {path} ...", flush=True)
    images, captions, _ = demo_world.make_dataset(n, size=size, seed=seed, chunk=96)
    from backend.fileio import save_npz_atomic

    save_npz_atomic(path, images=images.numpy(), captions=np.array(captions))
    print(f"rendered in {time.time() - t0:.0f}s", flush=True)
    return images.numpy(), captions


# ---------------------------------------------------------------------------------------------------
# Model


def build_models(tok, seed: int):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tok),
                max_position_embeddings=MAX_TOKENS,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                **TEXT_CONFIG,
            )
        )
    return unet, text_encoder, DDPMScheduler(**SCHEDULER_CONFIG)


class EMA:
    """Exponential moving average of parameters, decay warmed up as min(decay, (1 + n) / (10 + n))."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.n = 0

    @torch.no_grad()
    def update(self) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and averaged weights (call twice to restore)."""
        for p, s in zip(self.params, self.shadow, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def save_prior(out: Path, unet, text_encoder, tok, scheduler, card: str, extra: dict[str, bytes]) -> None:
    """Write the model in diffusers layout into a temp folder beside `out`, then swap it in."""
    import diffusers

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        save_tokenizer(tok, tmp / "tokenizer", *tok.bpe_files)
        scheduler.save_pretrained(tmp / "scheduler")
        index = {
            "_class_name": PIXEL_PIPELINE_CLASS,
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", "DDPMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
        }
        write_json_atomic(tmp / "model_index.json", index)
        write_json_atomic(tmp / "dreamsmith.json", RECOMMENDED)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for name, data in extra.items():
            write_bytes_atomic(tmp / name, data)
        old = out.parent / f".{out.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def plot_losses(rows: list[dict]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, lw=0.5, alpha=0.35, label="per step")
    k = max(1, min(100, len(loss) // 10))
    if len(loss) >= k:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("epsilon MSE")
    ax.set_yscale("log")
    ax.set_title("demo prior training loss")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def model_card(info: dict) -> str:
    return f"""# Dreamsmith demo prior

A small text-to-image diffusion model that Dreamsmith trains itself (`scripts/train_demo_prior.py`),
so generation works offline on a CPU and quality can be measured against ground truth. Pixel space
(no VAE), 32 x 32 RGB, diffusers layout; loaded by the same code path as Stable Diffusion.

- **Data**: {info["dataset_size"]} renders of `backend/demo_world.py`: shapes {", ".join(demo_world.SHAPES)}
  x colours {", ".join(demo_world.COLOURS)} (the house has a dark door on its front, -Y side), cameras drawn
  like the engine's (`sample_cameras(CameraConfig())`, plus {int(demo_world.OVERHEAD_SHARE * 100)}% at
  elevation 45-85 degrees for "overhead view"), Lambertian shading with a light near the camera, white
  background, 2 x 2 supersampled. Captions: "a red cube, front view" (view suffixes as the engine's),
  {int(NO_VIEW_P * 100)}% without a view suffix, {int(UNCOND_P * 100)}% empty (classifier-free guidance).
- **Model**: UNet2DConditionModel {info["unet_params"] / 1e6:.2f} M parameters,
  block_out_channels {UNET_CONFIG["block_out_channels"]}, cross-attention at 8 x 8;
  CLIPTextModel {info["text_params"] / 1e6:.2f} M parameters (hidden {TEXT_DIM}, 2 layers), trained jointly;
  CLIP BPE tokenizer over the world's words (bytes for anything else), 77 tokens.
  Scheduler: DDPM, scaled-linear betas 0.00085-0.012, 1000 steps, epsilon prediction (Stable Diffusion's).
  Saved weights: exponential moving average (decay {info["ema_decay"]}).
  `dreamsmith.json` recommends t_max 0.6 and, for the SDS rule, guidance scale 3 for score distillation with
  this model, and one torch thread on a CPU (the engine uses them when a run leaves t_max / guidance_scale /
  cpu_threads unset).
- **Training**: {info["steps"]} steps, batch {info["batch_size"]}, AdamW lr {info["lr"]} (warm-up, cosine
  decay), seed {info["seed"]}, {info["minutes"]:.1f} minutes on {info["device"]} ({info["steps_per_s"]:.2f} steps/s):
  `{info.get("command", "scripts/train_demo_prior.py")}`.
- **Loss**: epsilon MSE{f", weighted by min(SNR, {info['min_snr']:g}) / SNR (min-SNR-gamma)" if info["min_snr"] else ""}.
  **Final loss** (mean of the last 200 steps): {info["final_loss"]:.4f}. Curve: `loss.png`, `train_log.json`.
"""


# ---------------------------------------------------------------------------------------------------
# Training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes", type=float, default=55.0, help="wall-clock budget for training (the shipped prior: 55)"
    )
    parser.add_argument("--steps", type=int, default=0, help="fixed number of steps (0: use --minutes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="dataset cache and logs")
    parser.add_argument("--dataset-size", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument(
        "--min-snr", type=float, default=5.0, help="min-SNR-gamma loss weighting (0: plain epsilon MSE)"
    )
    parser.add_argument("--resume", type=Path, default=None, help="continue from a saved prior folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every-min", type=float, default=4.0)
    # One thread: on a shared, oversubscribed CPU, OpenMP barriers with 2+ threads stall badly.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--render-only", action="store_true", help="render and cache the dataset, then exit")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = UNET_CONFIG["sample_size"]
    images, captions = load_or_render_dataset(args.cache, args.dataset_size, size, args.seed)
    if args.render_only:
        return 0

    tok_dir = args.cache / "tokenizer_build"
    tok = build_tokenizer(tok_dir)
    check_tokenizer(tok)
    unet, text_encoder, scheduler = build_models(tok, args.seed)
    previous = {"steps": 0, "minutes": 0.0}
    if args.resume:
        # Continue from a saved prior (its EMA weights): same architecture, same tokenizer.
        from safetensors.torch import load_file

        unet.load_state_dict(load_file(args.resume / "unet" / "diffusion_pytorch_model.safetensors"))
        text_encoder.load_state_dict(
            load_file(args.resume / "text_encoder" / "model.safetensors"), strict=False
        )
        old = json.loads((args.resume / "train_log.json").read_text())["info"]
        previous = {"steps": int(old["steps"]), "minutes": float(old["minutes"])}
        print(f"resumed from {args.resume} after {previous['steps']} steps", flush=True)
    unet.to(device).train()
    text_encoder.to(device).train()
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    print(f"unet {n_unet / 1e6:.2f} M params, text encoder {n_text / 1e6:.2f} M params", flush=True)

    # Captions are few: tokenize the distinct ones once. Index 0 is the empty caption.
    bare = [c.rsplit(",", 1)[0] for c in captions]
    texts = [""] + sorted(set(captions) | set(bare))
    text_index = {t: i for i, t in enumerate(texts)}
    token_ids = tok(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    token_ids = token_ids.input_ids.to(device)
    cap_idx = torch.tensor([text_index[c] for c in captions])
    bare_idx = torch.tensor([text_index[c] for c in bare])
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, H, W]

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    ema = EMA([unet, text_encoder], args.ema_decay)
    abar = scheduler.alphas_cumprod.to(device)
    gen = torch.Generator().manual_seed(args.seed)
    warmup = 100

    log_dir = args.cache / "train_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    csv_path = log_dir / "loss.csv"
    rows: list[dict] = []
    budget = args.minutes * 60.0
    t0 = time.time()
    last_save = t0
    step = 0

    def progress() -> float:
        if args.steps:
            return step / args.steps
        return (time.time() - t0) / budget

    def checkpoint(final: bool) -> None:
        elapsed = time.time() - t0
        recent = [r["loss"] for r in rows[-200:]]
        info = {
            "dataset_size": len(images),
            "unet_params": n_unet,
            "text_params": n_text,
            "ema_decay": args.ema_decay,
            "steps": previous["steps"] + step,
            "resumed_steps": previous["steps"],
            "batch_size": args.batch_size,
            "lr": args.lr,
            "min_snr": args.min_snr,
            "seed": args.seed,
            "minutes": previous["minutes"] + elapsed / 60,
            "device": str(device),
            "steps_per_s": step / max(elapsed, 1e-9),
            "final_loss": float(np.mean(recent)) if recent else float("nan"),
            "final": final,
            "command": " ".join(
                ["scripts/train_demo_prior.py", *(argv if argv is not None else sys.argv[1:])]
            ),
        }
        every = max(1, len(rows) // 2000)
        log = {"info": info, "unet_config": UNET_CONFIG, "text_config": TEXT_CONFIG, "curve": rows[::every]}
        png = plot_losses(rows) if rows else b""
        ema.swap()
        unet.eval()
        text_encoder.eval()
        save_prior(
            args.out,
            unet,
            text_encoder,
            tok,
            scheduler,
            model_card(info),
            {"train_log.json": json.dumps(log, indent=1).encode(), "loss.png": png},
        )
        ema.swap()
        unet.train()
        text_encoder.train()
        write_json_atomic(log_dir / "train_log.json", log)
        if png:
            write_bytes_atomic(log_dir / "loss.png", png)
        print(
            f"saved {args.out} at step {step} ({elapsed / 60:.1f} min, loss {info['final_loss']:.4f})",
            flush=True,
        )

    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "elapsed_s", "loss", "lr"])
        while progress() < 1.0:
            p = progress()
            lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.randint(0, len(data), (args.batch_size,), generator=gen)
            x0 = data[idx].to(device).float() / 127.5 - 1.0
            u = torch.rand(args.batch_size, generator=gen)
            cond = torch.where(u < NO_VIEW_P, bare_idx[idx], cap_idx[idx])
            cond = torch.where(u > 1 - UNCOND_P, torch.zeros_like(cond), cond)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = t.to(device)
            a = abar[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            emb = text_encoder(token_ids[cond.to(device)])[0]
            pred = unet(x_t, t, encoder_hidden_states=emb).sample
            # Min-SNR-gamma weighting (Hang et al. 2023) for epsilon prediction: min(SNR, gamma) / SNR.
            snr = a.flatten() / (1 - a.flatten())
            weight = snr.clamp(max=args.min_snr) / snr if args.min_snr > 0 else torch.ones_like(snr)
            loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema.update()
            step += 1
            elapsed = time.time() - t0
            rows.append(
                {"step": step, "elapsed_s": round(elapsed, 2), "loss": float(loss.detach()), "lr": lr}
            )
            writer.writerow([step, f"{elapsed:.2f}", f"{float(loss.detach()):.5f}", f"{lr:.6g}"])
            if step % 50 == 0:
                f.flush()
                mean = np.mean([r["loss"] for r in rows[-50:]])
                print(f"step {step} {elapsed / 60:.1f} min loss {mean:.4f} lr {lr:.2e}", flush=True)
            if time.time() - last_save > args.save_every_min * 60:
                checkpoint(final=False)
                last_save = time.time()
    checkpoint(final=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
