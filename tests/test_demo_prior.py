"""The built-in demo prior: loads through the same loader as Stable Diffusion, and is the default."""

from __future__ import annotations

import json

import pytest
import torch

from backend.engine.prior import DEMO_PRIOR_PATH, load_prior

pytestmark = pytest.mark.skipif(
    not (DEMO_PRIOR_PATH / "model_index.json").is_file(),
    reason="demo prior not trained yet (python scripts/train_demo_prior.py)",
)


@pytest.fixture(scope="module")
def demo_prior():
    return load_prior(None, torch.device("cpu"))


def test_demo_prior_is_the_default_and_loads_like_stable_diffusion(demo_prior):
    assert demo_prior.name == "demo"
    assert not demo_prior.is_latent  # pixel space, no VAE
    assert demo_prior.input_size == 32
    assert demo_prior.num_train_timesteps == 1000
    # Stable Diffusion's scaled-linear schedule, so the engine's timestep math is unchanged.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, 0).float()
    assert torch.allclose(demo_prior.alphas_cumprod, expected, atol=1e-6)
    index = json.loads((DEMO_PRIOR_PATH / "model_index.json").read_text())
    assert {"unet", "text_encoder", "tokenizer", "scheduler"} <= set(index) and "vae" not in index


def test_demo_prior_folder_is_small_and_safetensors():
    files = [p for p in DEMO_PRIOR_PATH.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25 * 2**20
    assert any(p.suffix == ".safetensors" for p in files)
    assert not any(p.suffix in (".bin", ".pt", ".ckpt") for p in files)
    assert (DEMO_PRIOR_PATH / "README.md").is_file()


def test_demo_prior_tokenizer_knows_the_world(demo_prior):
    tok = demo_prior.tokenizer
    text = "a purple cylinder, overhead view"
    ids = tok(text).input_ids
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True).replace(" ,", ",") == text


def test_demo_prior_predicts_finite_noise_that_depends_on_the_prompt(demo_prior):
    red = demo_prior.encode_prompts("a red cube")
    blue = demo_prior.encode_prompts("a blue cube")
    assert red.uncond.shape == (1, 77, demo_prior.text_encoder.config.hidden_size)
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 64, 64, generator=g)
    x = demo_prior.to_model_space(rgb)
    assert x.shape == (2, 3, 32, 32)
    eps_red = demo_prior.predict_noise(x, torch.tensor(500), red.views["front"])
    eps_blue = demo_prior.predict_noise(x, torch.tensor(500), blue.views["front"])
    assert torch.isfinite(eps_red).all()
    assert (eps_red - eps_blue).abs().mean() > 1e-4


def test_demo_prior_recommends_a_lower_t_max_and_one_cpu_thread(demo_prior):
    # Without the largest timesteps, distillation from this prior does not inflate non-spherical objects.
    assert demo_prior.recommended == {"t_max": 0.6, "guidance_scale": {"sds": 3.0}, "cpu_threads": 1.0}
