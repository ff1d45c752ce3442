"""ASD, ScaleDreamer's asynchronous score distillation (Ma et al. 2024, eq. 7).

    grad = w(t) (eps_hat(x_t; y, t) - eps_phi(x_{t+dt}; y, t + dt)),   dt ~ U[0, eta (t - t_min)]

The SAME eps noises x at t and at t+ = min(t + dt, T - 1); eps_hat is classifier-free guided at t
(s ~ 7.5), the prediction at t+ is conditional without guidance. One UNet call on
[x_t | cond ; x_t | uncond ; x_{t+} | cond] (3B images). ScaleDreamer anneals the uniform timestep window
from [0.5, 0.98] T to [0.02, 0.5] T over the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from backend.engine.rules.base import (
    GradientRule,
    NoisePredictor,
    abar,
    add_noise,
    batch_embeddings,
    classifier_free_guidance,
    noise_like,
    timesteps,
)

if TYPE_CHECKING:
    from backend.config import GenerationConfig


class ASD(GradientRule):
    name = "asd"
    title = "ASD"
    description = (
        "ScaleDreamer's asynchronous score distillation: guided prediction at t minus the prediction "
        "at a later t + dt"
    )
    default_guidance_scale = 7.5
    uniform_window = (0.5, 0.98, 0.02, 0.5)
    unet_batch_factor = 3
    order = 1

    def __init__(self, guidance_scale: float, eta: float = 0.1, t_min: int = 20) -> None:
        super().__init__(guidance_scale)
        self.eta = float(eta)
        self.t_min = int(t_min)

    @classmethod
    def from_config(cls, cfg: GenerationConfig, t_min: int) -> ASD:
        return cls(cfg.effective_guidance_scale, eta=cfg.asd_eta, t_min=t_min)

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
        b = x.shape[0]
        t = timesteps(t, b)
        T = prior.num_train_timesteps
        # dt ~ U[0, eta (t - t_min)] per image, in whole timesteps; t+ = min(t + dt, T - 1).
        span = self.eta * (t - self.t_min).clamp(min=0).double()
        u = torch.rand(b, generator=generator, device=generator.device, dtype=torch.float64).cpu()
        dt = torch.floor(u * span).long()
        t_plus = (t + dt).clamp(max=T - 1)
        # The SAME eps noises x at t and at t+.
        eps = noise_like(x, generator)
        x_t = add_noise(x, eps, abar(prior, t, x))
        x_t_plus = add_noise(x, eps, abar(prior, t_plus, x))
        cond, uncond = batch_embeddings(cond, b), batch_embeddings(uncond, b)
        eps_pred = prior.predict_noise(
            torch.cat([x_t, x_t, x_t_plus]),
            torch.cat([t, t, t_plus]),
            torch.cat([cond, uncond, cond]),
        ).to(x.device, torch.float32)
        eps_cond, eps_uncond, eps_cond_plus = eps_pred.chunk(3)
        eps_hat_1 = classifier_free_guidance(eps_uncond, eps_cond, self.guidance_scale)  # CFG at t
        eps_hat_2 = eps_cond_plus  # conditional prediction at t+, no CFG
        return (1 - abar(prior, t, x)) * (eps_hat_1 - eps_hat_2)  # w(t) = 1 - abar_t

    def __repr__(self) -> str:
        return f"ASD(guidance_scale={self.guidance_scale:g}, eta={self.eta:g}, t_min={self.t_min})"
