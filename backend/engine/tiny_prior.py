"""Tiny random diffusers models for tests: same layout as Stable Diffusion, a few MB of weights.

Nothing here is downloaded: the CLIP tokenizer is built from a byte-level vocabulary written in code,
so the folder loads through exactly the same `from_pretrained` path as a real model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from backend.fileio import write_json_atomic

PIXEL_PIPELINE_CLASS = "DreamsmithPixelPipeline"
TEXT_DIM = 32
MAX_TOKENS = 77
# A few whole words get their own token so prompts are not all single bytes.
_WORDS = (
    "a",
    "the",
    "of",
    "red",
    "blue",
    "green",
    "cube",
    "sphere",
    "view",
    "front",
    "side",
    "back",
    "overhead",
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """CLIP-style BPE tokenizer (bytes, bytes + '</w>', a few merges, start/end tokens), built offline."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = (pieces[0], pieces[1])
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            if merge not in merges:
                merges.append(merge)
                tokens.append(pieces[0])
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    # The BPE model takes (a, b) pairs as merges; transformers annotates the argument as list[str].
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)  # type: ignore[arg-type]


def _model_index(pixel: bool) -> dict[str, Any]:
    index = {
        "_class_name": PIXEL_PIPELINE_CLASS if pixel else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    if not pixel:
        index |= {
            "vae": ["diffusers", "AutoencoderKL"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
    return index


def make_tiny_prior(path: Path | str, pixel: bool = False, seed: int = 0) -> Path:
    """Write a tiny random text-to-image model to `path` in diffusers layout and return the path.

    Latent (default): UNet on 4x16x16 latents + AutoencoderKL with one downsampling -> input_size 32.
    Pixel (`pixel=True`): UNet on 3x32x32 images, no VAE. Weights depend only on `seed`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    channels = 3 if pixel else 4
    with torch.random.fork_rng(devices=[]):  # deterministic init without touching the caller's RNG
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32 if pixel else 16,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        tokenizer = tiny_clip_tokenizer()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_DIM,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        vae = None
        if not pixel:
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(32, 64),
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                layers_per_block=1,
                norm_num_groups=32,
                sample_size=32,
            )
    # Stable Diffusion's scaled-linear betas, so schedules behave as with the real model.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )
    unet.save_pretrained(path / "unet")
    text_encoder.save_pretrained(path / "text_encoder")
    tokenizer.save_pretrained(path / "tokenizer")
    scheduler.save_pretrained(path / "scheduler")
    if vae is not None:
        vae.save_pretrained(path / "vae")
    write_json_atomic(path / "model_index.json", _model_index(pixel))
    return path
