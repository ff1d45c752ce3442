"""Coarse-to-fine hash-grid levels (Neuralangelo; threestudio's ProgressiveBandHashGrid).

At the start only the `start` coarsest levels of the multi-resolution encoding reach the MLPs; the others
fade in one after another (weight clamp(active - l, 0, 1) for level l) until all are active at a fraction
`ramp` of the run. Early steps then shape the object with smooth, low-frequency features, and the fine
levels, which pick up the high-frequency noise of score distillation, only add detail to a formed shape.
start 0 turns it off (every level from the first step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ProgressiveLevels(nn.Module):
    weights: Tensor  # [L * F] per-feature weights, level-major (as the encodings' outputs)

    def __init__(self, n_levels: int, n_features: int, start: int = 0, ramp: float = 0.5) -> None:
        super().__init__()
        self.n_levels, self.n_features = int(n_levels), int(n_features)
        self.start = int(start) if 0 < start < n_levels else n_levels
        self.ramp = float(ramp)
        # A buffer, saved with the weights: an export or a resumed run sees the levels the run had.
        self.register_buffer("weights", torch.ones(self.n_levels * self.n_features))
        self.update(0, 1)

    @property
    def all_active(self) -> bool:
        return self.start >= self.n_levels or bool((self.weights == 1).all())

    def active_levels(self, step: int, total: int) -> float:
        if self.start >= self.n_levels:
            return float(self.n_levels)
        done = step / max(self.ramp * max(total - 1, 1), 1e-9)
        return self.start + (self.n_levels - self.start) * min(max(done, 0.0), 1.0)

    @torch.no_grad()
    def update(self, step: int, total: int) -> None:
        active = self.active_levels(step, total)
        levels = torch.arange(self.n_levels, dtype=torch.float32, device=self.weights.device)
        per_level = (active - levels).clamp(0.0, 1.0)
        self.weights.copy_(per_level.repeat_interleave(self.n_features))

    def forward(self, features: Tensor) -> Tensor:
        """features [N, L * F] -> the same with the inactive levels zeroed (untouched when all are on)."""
        if self.all_active:
            return features
        return features * self.weights.to(features.dtype)
