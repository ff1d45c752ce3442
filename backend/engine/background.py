"""What rays that leave the geometry see: a learned colour per view direction, a random solid colour, or white.

DreamFusion renders against an MLP of the ray direction; a random solid colour per image (threestudio's
"random_aug") keeps the field from baking the background into the object; the demo prior was trained on
white. The renderer composites rgb = sum_i w_i c_i + (1 - opacity) bg.

Interface: `background(rays_d [B, H, W, 3], generator) -> colours [B, H, W, 3]` in [0, 1], and
`param_groups(cfg)` for the optimizer (empty for the fixed kinds).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from backend.config import GenerationConfig


class Background(nn.Module):
    kind = ""

    def forward(self, rays_d: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def param_groups(self, cfg: GenerationConfig) -> list[dict[str, Any]]:
        return []


class LearnedBackground(Background):
    """View direction [..., 3] -> RGB [..., 3] in [0, 1]: a low-frequency encoding and a tiny MLP.

    The encoding stops at a few frequencies on purpose: a sharper background could paint the object.
    """

    kind = "learned"
    freqs: Tensor  # a buffer, registered in __init__

    def __init__(self, n_frequencies: int = 2, hidden_dim: int = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(n_frequencies)) * math.pi, persistent=False)
        n_in = 3 + 6 * n_frequencies
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, 3))

    def encode(self, dirs: Tensor) -> Tensor:
        """[..., 3] -> [..., 3 + 6 n_frequencies]: (d, sin(2^k pi d), cos(2^k pi d))."""
        scaled = (dirs.unsqueeze(-1) * self.freqs).flatten(-2)  # [..., 3 n_frequencies]
        return torch.cat([dirs, torch.sin(scaled), torch.cos(scaled)], -1)

    def forward(self, rays_d: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Unit view directions [..., 3] -> colour [..., 3] in [0, 1]."""
        return torch.sigmoid(self.mlp(self.encode(rays_d)))

    def param_groups(self, cfg: GenerationConfig) -> list[dict[str, Any]]:
        return [{"name": "background", "params": list(self.parameters()), "lr": cfg.lr_background}]


class RandomBackground(Background):
    """One solid colour per image, drawn from the generator."""

    kind = "random"

    def forward(self, rays_d: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if generator is None:
            raise ValueError('background "random" needs a torch.Generator')
        shape = (rays_d.shape[0],) + (1,) * (rays_d.dim() - 2) + (3,)
        color = torch.rand(shape, generator=generator, device=generator.device)
        return color.to(device=rays_d.device, dtype=rays_d.dtype).expand(rays_d.shape).contiguous()


class WhiteBackground(Background):
    kind = "white"

    def forward(self, rays_d: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.ones_like(rays_d)


BACKGROUNDS: dict[str, type[Background]] = {
    cls.kind: cls for cls in (LearnedBackground, RandomBackground, WhiteBackground)
}


def make_background(kind: str) -> Background:
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")
    return BACKGROUNDS[kind]()
