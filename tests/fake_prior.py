"""A fake prior for the gradient rules' tests: SD's alphas_cumprod, a cheap deterministic 'UNet', a call log."""

from __future__ import annotations

import numpy as np
import torch

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
