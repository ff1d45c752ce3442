"""CSD, classifier score distillation (Yu et al. 2023, "Text-to-3D with Classifier Score Distillation").

    grad = w(t) s (eps_c(x_t; y, t) - eps_u(x_t; t))

Only the classifier part of the guided score: SDS's gradient without its eps_u - eps term, which at
s ~ 100 is small next to the guided difference. ScaleDreamer compares ASD against it. One UNet call on
[x_t | cond ; x_t | uncond] (2B images), as SDS.
"""

from __future__ import annotations

import torch
from torch import Tensor

from backend.engine.rules.base import (
    GradientRule,
    NoisePredictor,
    abar,
    add_noise,
    guided_predictions,
    noise_like,
    timesteps,
)


class CSD(GradientRule):
    name = "csd"
    title = "CSD"
    description = "Classifier score distillation: conditional minus unconditional noise prediction"
    default_guidance_scale = 100.0
    unet_batch_factor = 2
    order = 2

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
        x_t = add_noise(x, noise_like(x, generator), abar_t)
        eps_cond, eps_uncond = guided_predictions(prior, x_t, t, cond, uncond)
        return (1 - abar_t) * self.guidance_scale * (eps_cond - eps_uncond)  # w(t) = 1 - abar_t
