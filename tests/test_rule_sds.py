"""The SDS rule (DreamFusion) against a fake prior that records its calls."""

from __future__ import annotations

import pytest
import torch
from fake_prior import B, FakePrior, col, embeddings, latents

from backend.engine.rules.sds import SDS


def test_sds_gradient_matches_hand_computation() -> None:
    prior, (cond, uncond), x = FakePrior(), embeddings(), latents()
    t = torch.tensor([50, 300, 600, 950])
    grad = SDS(100.0).gradient(prior, x, t, cond, uncond, torch.Generator().manual_seed(7))

    assert len(prior.calls) == 1  # ONE UNet call ...
    call = prior.calls[0]
    assert call["x_t"].shape[0] == 2 * B  # ... on [x_t cond ; x_t uncond]
    assert torch.equal(call["t"], torch.cat([t, t]))
    assert torch.equal(call["emb"], torch.cat([cond, uncond.expand(B, -1, -1)]))

    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    abar = col(prior.alphas_cumprod[t])
    x_t = abar.sqrt() * x + (1 - abar).sqrt() * eps
    assert torch.allclose(call["x_t"][:B], x_t) and torch.allclose(call["x_t"][B:], x_t)
    eps_c, eps_u = call["out"][:B], call["out"][B:]
    expected = (1 - abar) * (eps_u + 100.0 * (eps_c - eps_u) - eps)
    assert grad.shape == x.shape
    assert torch.allclose(grad, expected, atol=1e-5)


def test_sds_scalar_t_is_shared_by_the_batch_and_reproducible() -> None:
    cond, uncond = embeddings()
    prior = FakePrior()
    g1 = SDS(100.0).gradient(prior, latents(), 400, cond, uncond, torch.Generator().manual_seed(1))
    assert torch.equal(prior.calls[0]["t"], torch.full((2 * B,), 400))
    g2 = SDS(100.0).gradient(FakePrior(), latents(), 400, cond, uncond, torch.Generator().manual_seed(1))
    assert torch.equal(g1, g2)


@pytest.mark.parametrize(
    "bad_t", [torch.tensor([1, 2]), torch.zeros(B, 1, dtype=torch.long) + torch.arange(2)]
)
def test_t_of_the_wrong_batch_size_is_refused(bad_t: torch.Tensor) -> None:
    cond, uncond = embeddings()
    with pytest.raises(ValueError, match="one timestep per image"):
        SDS(100.0).gradient(FakePrior(), latents(), bad_t, cond, uncond, torch.Generator().manual_seed(0))
