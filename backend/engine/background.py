"""What rays that leave the field see: a learned colour per view direction, a random solid colour, or white.

DreamFusion renders against an MLP of the ray direction; a random solid colour per image (threestudio's
"random_aug") keeps the field from baking the background into the object. Both are composited by the
renderer as rgb = sum_i w_i c_i + (1 - opacity) bg.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from backend.config import BACKGROUNDS, GenerationConfig


class LearnedBackground(nn.Module):
    """View direction [..., 3] -> RGB [..., 3] in [0, 1]: a low-frequency encoding and a tiny MLP.

    The encoding stops at a few frequencies on purpose: a sharper background could paint the object.
    """

    def __init__(self, n_frequencies: int = 2, hidden_dim: int = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(n_frequencies)) * math.pi, persistent=False)
        n_in = 3 + 6 * n_frequencies
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, 3))

    def encode(self, dirs: Tensor) -> Tensor:
        """[..., 3] -> [..., 3 + 6 n_frequencies]: (d, sin(2^k pi d), cos(2^k pi d))."""
        scaled = (dirs.unsqueeze(-1) * self.freqs).flatten(-2)  # [..., 3 n_frequencies]
        return torch.cat([dirs, torch.sin(scaled), torch.cos(scaled)], -1)

    def forward(self, dirs: Tensor) -> Tensor:
        """Unit view directions [..., 3] -> colour [..., 3] in [0, 1]."""
        return torch.sigmoid(self.mlp(self.encode(dirs)))

    def param_groups(self, cfg: GenerationConfig) -> list[dict]:
        return [{"name": "background", "params": list(self.parameters()), "lr": cfg.lr_background}]


def background_color(
    kind: str,
    background_module: LearnedBackground | None,
    rays_d: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """Background for a batch of rays [B, H, W, 3] -> colours [B, H, W, 3] in [0, 1].

    kind: "learned" (background_module(rays_d)), "random" (one solid colour per image, drawn from
    `generator`) or "white".
    """
    if kind == "learned":
        if background_module is None:
            raise ValueError('background "learned" needs a LearnedBackground module')
        return background_module(rays_d)
    if kind == "random":
        if generator is None:
            raise ValueError('background "random" needs a torch.Generator')
        shape = (rays_d.shape[0],) + (1,) * (rays_d.dim() - 2) + (3,)
        color = torch.rand(shape, generator=generator, device=generator.device)
        return color.to(device=rays_d.device, dtype=rays_d.dtype).expand(rays_d.shape).contiguous()
    if kind == "white":
        return torch.ones_like(rays_d)
    raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")
