"""SDS, DreamFusion's score distillation (Poole et al. 2022, eq. 3).

    grad = w(t) (eps_hat(x_t; y, t) - eps),   eps_hat = eps_u + s (eps_c - eps_u),   s ~ 100

eps is the noise that made x_t; one UNet call on [x_t | cond ; x_t | uncond] (2B images).
"""

from __future__ import annotations

import torch
from torch import Tensor

from backend.engine.rules.base import (
    GradientRule,
    NoisePredictor,
    abar,
    add_noise,
    classifier_free_guidance,
    guided_predictions,
    noise_like,
    timesteps,
)


class SDS(GradientRule):
    name = "sds"
    title = "SDS"
    description = "DreamFusion's score distillation: guided noise prediction minus the added noise"
    default_guidance_scale = 100.0
    unet_batch_factor = 2
    order = 0

    @torch.no_grad()
    def gradient(
        self,
        prior: NoisePredictor,
        x: Tensor,
        t: Tensor | int,
        cond: Tensor,
        uncond: Tensor,
        generator: torch.Generator,
    ) -> Tensor:
        x = x.detach().float()
        t = timesteps(t, x.shape[0])
        abar_t = abar(prior, t, x)
        eps = noise_like(x, generator)
        eps_cond, eps_uncond = guided_predictions(prior, add_noise(x, eps, abar_t), t, cond, uncond)
        eps_hat = classifier_free_guidance(eps_uncond, eps_cond, self.guidance_scale)
        return (1 - abar_t) * (eps_hat - eps)  # w(t) = 1 - abar_t
