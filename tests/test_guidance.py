"""Gradient rules (SDS, ASD) and the distillation loss, checked against a fake prior that records calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine.guidance import (
    asd_gradient,
    classifier_free_guidance,
    score_distillation_loss,
    sds_gradient,
)

T = 1000
B, C, H = 4, 4, 8
L, D = 5, 6


class FakePrior:
    """Stands in for `Prior`: SD's alphas_cumprod, a cheap deterministic 'UNet', and a call log."""

    def __init__(self) -> None:
        betas = np.linspace(0.00085**0.5, 0.012**0.5, T, dtype=np.float64) ** 2
        self.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas)).float()
        self.num_train_timesteps = T
        self.calls: list[dict[str, torch.Tensor]] = []

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).reshape(-1).expand(x_t.shape[0])
        # Depends on the input, the timestep and the text, so a mixed-up batch order changes the result.
        out = 0.3 * x_t + text_emb.mean(dim=(1, 2)).view(-1, 1, 1, 1) + 1e-3 * t.view(-1, 1, 1, 1)
        self.calls.append({"x_t": x_t.clone(), "t": t.clone(), "emb": text_emb.clone(), "out": out.clone()})
        return out


def embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    cond = torch.randn(B, L, D, generator=g) + 1.0
    uncond = torch.randn(1, L, D, generator=g) - 1.0
    return cond, uncond


def latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, C, H, H, generator=torch.Generator().manual_seed(seed))


def col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def test_classifier_free_guidance_formula() -> None:
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    assert torch.allclose(classifier_free_guidance(u, c, 7.5), u + 7.5 * (c - u))
    assert torch.allclose(classifier_free_guidance(u, c, 1.0), c)
    assert torch.allclose(classifier_free_guidance(u, c, 0.0), u)


def test_sds_gradient_matches_hand_computation() -> None:
    prior, (cond, uncond), x = FakePrior(), embeddings(), latents()
    t = torch.tensor([50, 300, 600, 950])
    grad = sds_gradient(prior, x, t, cond, uncond, 100.0, torch.Generator().manual_seed(7))

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
    g1 = sds_gradient(prior, latents(), 400, cond, uncond, 100.0, torch.Generator().manual_seed(1))
    assert torch.equal(prior.calls[0]["t"], torch.full((2 * B,), 400))
    g2 = sds_gradient(FakePrior(), latents(), 400, cond, uncond, 100.0, torch.Generator().manual_seed(1))
    assert torch.equal(g1, g2)


def test_asd_uses_one_call_of_3b_and_one_shared_noise() -> None:
    prior, (cond, uncond), x = FakePrior(), embeddings(), latents()
    t = torch.tensor([100, 400, 700, 980])
    grad = asd_gradient(prior, x, t, cond, uncond, 7.5, 0.1, 20, torch.Generator().manual_seed(3))

    assert len(prior.calls) == 1
    call = prior.calls[0]
    assert call["x_t"].shape[0] == 3 * B  # [x_t cond, x_t uncond, x_{t+} cond]
    assert torch.equal(call["emb"], torch.cat([cond, uncond.expand(B, -1, -1), cond]))
    t_rows, t_plus = call["t"][: 2 * B], call["t"][2 * B :]
    assert torch.equal(t_rows, torch.cat([t, t]))

    # Recover the noise from x_t and from x_{t+}: it must be the same draw.
    abar, abar_plus = col(prior.alphas_cumprod[t]), col(prior.alphas_cumprod[t_plus])
    x_t, x_t_plus = call["x_t"][:B], call["x_t"][2 * B :]
    assert torch.equal(call["x_t"][B : 2 * B], x_t)
    eps_from_t = (x_t - abar.sqrt() * x) / (1 - abar).sqrt()
    eps_from_t_plus = (x_t_plus - abar_plus.sqrt() * x) / (1 - abar_plus).sqrt()
    assert torch.allclose(eps_from_t, eps_from_t_plus, atol=1e-4)
    assert eps_from_t.std() > 0.5  # it is real noise, not zeros

    eps_c, eps_u, eps_c_plus = call["out"].chunk(3)
    expected = (1 - abar) * (eps_u + 7.5 * (eps_c - eps_u) - eps_c_plus)
    assert torch.allclose(grad, expected, atol=1e-5)


def test_asd_time_shift_stays_within_eta_window() -> None:
    prior, (cond, uncond), x = FakePrior(), embeddings(), latents()
    g = torch.Generator().manual_seed(0)
    eta, t_min = 0.1, 20
    shifts, bounds = [], []
    for t0 in range(20, 1000, 7):
        t = torch.tensor([t0, t0, min(t0 + 3, 999), max(t0 - 3, 20)])
        asd_gradient(prior, x, t, cond, uncond, 7.5, eta, t_min, g)
        t_plus = prior.calls[-1]["t"][2 * B :]
        dt = t_plus - t
        assert (dt >= 0).all()
        assert (t_plus <= T - 1).all()
        # dt <= eta (t - t_min); it may be cut shorter only by t+ = min(t + dt, T - 1).
        ok = (dt <= eta * (t - t_min)) | (t_plus == T - 1)
        assert ok.all(), (t, t_plus)
        shifts.append(dt.double())
        bounds.append(eta * (t - t_min).double())
    dt_all, bound_all = torch.cat(shifts), torch.cat(bounds)
    free = bound_all > 20
    ratio = dt_all[free] / bound_all[free]
    assert ratio.min() < 0.1 and ratio.max() > 0.85  # really random over the whole window
    assert (dt_all[bound_all < 1] == 0).all()  # at t = t_min there is no shift


def test_asd_with_eta_zero_has_no_shift() -> None:
    prior, (cond, uncond), x = FakePrior(), embeddings(), latents()
    asd_gradient(prior, x, 600, cond, uncond, 7.5, 0.0, 20, torch.Generator().manual_seed(0))
    assert torch.equal(prior.calls[0]["t"], torch.full((3 * B,), 600))


def test_loss_carries_grad_into_parameters() -> None:
    x = torch.nn.Parameter(latents(1))
    grad = latents(2)
    loss = score_distillation_loss(x, grad)
    loss.backward()
    assert torch.allclose(x.grad, grad / B, atol=1e-6)
    assert torch.isclose(loss, 0.5 * (grad**2).sum() / B)


def test_loss_through_a_function_of_parameters() -> None:
    w = torch.nn.Parameter(torch.tensor(2.0))
    base = latents(1)
    grad = latents(2)
    score_distillation_loss(w * base, grad).backward()
    assert torch.isclose(w.grad, (grad * base).sum() / B, atol=1e-4)


def test_loss_replaces_non_finite_values_and_clips() -> None:
    x = torch.nn.Parameter(torch.zeros(2, 1, 1, 3))
    grad = torch.tensor([[[[float("nan"), float("inf"), 5.0]]], [[[-float("inf"), -5.0, 0.5]]]])
    score_distillation_loss(x, grad, clip=1.0).backward()
    expected = torch.tensor([[[[0.0, 0.0, 1.0]]], [[[0.0, -1.0, 0.5]]]]) / 2
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize(
    "bad_t", [torch.tensor([1, 2]), torch.zeros(B, 1, dtype=torch.long) + torch.arange(2)]
)
def test_t_of_the_wrong_batch_size_is_refused(bad_t: torch.Tensor) -> None:
    cond, uncond = embeddings()
    with pytest.raises(ValueError, match="one timestep per image"):
        sds_gradient(FakePrior(), latents(), bad_t, cond, uncond, 100.0, torch.Generator().manual_seed(0))
