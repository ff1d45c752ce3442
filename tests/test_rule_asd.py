"""The ASD rule (ScaleDreamer) against a fake prior that records its calls."""

from __future__ import annotations

import torch
from fake_prior import B, FakePrior, T, col, embeddings, latents

from backend.engine.rules.asd import ASD


def test_asd_uses_one_call_of_3b_and_one_shared_noise() -> None:
    prior, (cond, uncond), x = FakePrior(), embeddings(), latents()
    t = torch.tensor([100, 400, 700, 980])
    grad = ASD(7.5, eta=0.1, t_min=20).gradient(prior, x, t, cond, uncond, torch.Generator().manual_seed(3))

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
        ASD(7.5, eta=eta, t_min=t_min).gradient(prior, x, t, cond, uncond, g)
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
    ASD(7.5, eta=0.0, t_min=20).gradient(prior, x, 600, cond, uncond, torch.Generator().manual_seed(0))
    assert torch.equal(prior.calls[0]["t"], torch.full((3 * B,), 600))
