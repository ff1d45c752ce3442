"""Gradient rules of score distillation: image latents x, timestep t, text -> a gradient on x.

- SDS (DreamFusion):  grad = w(t) (eps_hat(x_t; y, t) - eps),                 CFG scale ~100
- ASD (ScaleDreamer): grad = w(t) (eps_hat(x_t; y, t) - eps_phi(x_{t+dt}; y, t+dt)), CFG scale ~7.5

with x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps and w(t) = 1 - abar_t. The gradient is a constant for
autograd; `score_distillation_loss` turns it into a loss whose derivative with respect to x is grad / B.

The functions take any object with `predict_noise(x_t, t, text_emb)`, `alphas_cumprod` [T] and
`num_train_timesteps` (a `backend.engine.prior.Prior`, or a fake one in tests).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class NoisePredictor(Protocol):
    alphas_cumprod: Tensor  # [T] float32
    num_train_timesteps: int

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor) -> Tensor: ...


def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """eps_hat = eps_u + s (eps_c - eps_u)  (Ho & Salimans, classifier-free guidance)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def _timesteps(t: Tensor | int, batch: int) -> Tensor:
    """t as a [B] long tensor on the CPU (a scalar is shared by the whole batch)."""
    t = torch.as_tensor(t).detach().to("cpu", torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or hold one timestep per image ({batch}), got {tuple(t.shape)}")
    return t.contiguous()


def _abar(prior: NoisePredictor, t: Tensor, like: Tensor) -> Tensor:
    """abar_t as [B, 1, 1, 1] on the device of `like`."""
    return prior.alphas_cumprod[t].to(like.device, torch.float32).view(-1, 1, 1, 1)


def _noise(x: Tensor, generator: torch.Generator) -> Tensor:
    """eps ~ N(0, I) drawn from `generator` (on its own device, so CPU runs are bit-reproducible)."""
    return torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, torch.float32)


def _batch_emb(emb: Tensor, batch: int) -> Tensor:
    return emb.expand(batch, -1, -1) if emb.shape[0] == 1 else emb


def add_noise(x: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """Forward diffusion q(x_t | x): x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps."""
    return abar.sqrt() * x + (1 - abar).sqrt() * eps


@torch.no_grad()
def sds_gradient(
    prior: NoisePredictor,
    x: Tensor,
    t: Tensor | int,
    cond: Tensor,
    uncond: Tensor,
    guidance_scale: float,
    generator: torch.Generator,
) -> Tensor:
    """DreamFusion's SDS gradient on x [B, C, h, w]; cond / uncond [B or 1, L, D]; t scalar or [B]."""
    x = x.detach().float()
    b = x.shape[0]
    t = _timesteps(t, b)
    abar = _abar(prior, t, x)
    eps = _noise(x, generator)
    x_t = add_noise(x, eps, abar)
    # One UNet call on [x_t | cond ; x_t | uncond] (2B).
    eps_pred = prior.predict_noise(
        torch.cat([x_t, x_t]),
        torch.cat([t, t]),
        torch.cat([_batch_emb(cond, b), _batch_emb(uncond, b)]),
    ).to(x.device, torch.float32)
    eps_cond, eps_uncond = eps_pred.chunk(2)
    eps_hat = classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)
    w = 1 - abar  # w(t) = 1 - abar_t
    return w * (eps_hat - eps)


@torch.no_grad()
def asd_gradient(
    prior: NoisePredictor,
    x: Tensor,
    t: Tensor | int,
    cond: Tensor,
    uncond: Tensor,
    guidance_scale: float,
    eta: float,
    t_min: int,
    generator: torch.Generator,
) -> Tensor:
    """ScaleDreamer's asynchronous score distillation gradient on x [B, C, h, w]."""
    x = x.detach().float()
    b = x.shape[0]
    t = _timesteps(t, b)
    T = prior.num_train_timesteps
    # dt ~ U[0, eta (t - t_min)] per image, in whole timesteps; t+ = min(t + dt, T - 1).
    span = eta * (t - t_min).clamp(min=0).double()
    u = torch.rand(b, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    dt = torch.floor(u * span).long()
    t_plus = (t + dt).clamp(max=T - 1)
    # The SAME eps noises x at t and at t+.
    eps = _noise(x, generator)
    x_t = add_noise(x, eps, _abar(prior, t, x))
    x_t_plus = add_noise(x, eps, _abar(prior, t_plus, x))
    cond, uncond = _batch_emb(cond, b), _batch_emb(uncond, b)
    # One UNet call on [x_t | cond ; x_t | uncond ; x_{t+} | cond] (3B).
    eps_pred = prior.predict_noise(
        torch.cat([x_t, x_t, x_t_plus]),
        torch.cat([t, t, t_plus]),
        torch.cat([cond, uncond, cond]),
    ).to(x.device, torch.float32)
    eps_cond, eps_uncond, eps_cond_plus = eps_pred.chunk(3)
    eps_hat_1 = classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)  # CFG at t
    eps_hat_2 = eps_cond_plus  # conditional prediction at t+, no CFG
    w = 1 - _abar(prior, t, x)  # w(t) = 1 - abar_t
    return w * (eps_hat_1 - eps_hat_2)


def score_distillation_loss(x: Tensor, grad: Tensor, clip: float | None = None) -> Tensor:
    """0.5 ||x - stopgrad(x - grad)||^2 / B, whose gradient with respect to x is exactly grad / B.

    Non-finite entries of grad become 0; `clip` bounds each entry to [-clip, clip].
    """
    grad = torch.nan_to_num(grad.detach().to(x.dtype), nan=0.0, posinf=0.0, neginf=0.0)
    if clip is not None:
        grad = grad.clamp(-clip, clip)
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).sum() / x.shape[0]
