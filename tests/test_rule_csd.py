"""The CSD rule (classifier score distillation) against a fake prior that records its calls."""

from __future__ import annotations

import torch
from fake_prior import B, FakePrior, col, embeddings, latents

from backend.engine.rules.csd import CSD


def test_csd_gradient_is_the_scaled_classifier_score() -> None:
    prior, (cond, uncond), x = FakePrior(), embeddings(), latents()
    t = torch.tensor([50, 300, 600, 950])
    grad = CSD(40.0).gradient(prior, x, t, cond, uncond, torch.Generator().manual_seed(7))

    assert len(prior.calls) == 1  # ONE UNet call on [x_t cond ; x_t uncond]
    call = prior.calls[0]
    assert call["x_t"].shape[0] == 2 * B
    assert torch.equal(call["emb"], torch.cat([cond, uncond.expand(B, -1, -1)]))
    eps_c, eps_u = call["out"][:B], call["out"][B:]
    abar = col(prior.alphas_cumprod[t])
    assert torch.allclose(grad, (1 - abar) * 40.0 * (eps_c - eps_u), atol=1e-5)


def test_csd_has_no_noise_residual() -> None:
    """Unlike SDS (eps_hat - eps), CSD vanishes when the prompt changes nothing: same text, zero gradient."""
    prior, (cond, _), x = FakePrior(), embeddings(), latents()
    grad = CSD(100.0).gradient(prior, x, 500, cond, cond, torch.Generator().manual_seed(0))
    assert torch.count_nonzero(grad) == 0
