"""An empty-space grid for the dense renderer: which cells of the bound box can hold density.

A boolean grid of R^3 cells over [-bound, bound]^3, refreshed every `update_every` steps: a cell is
occupied when sigma * (2 bound / samples_per_ray) exceeds `threshold` at one of its 8 corners ((R + 1)^3
probes in all), then the grid is dilated by one cell. Samples in empty cells get sigma = 0 without
evaluating the geometry: as with nerfacc's grid, they also get no gradient, so density grows outward from
the occupied region only (one cell per refresh at most).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.engine.geometry.base import Geometry


class OccupancyGrid:
    def __init__(self, resolution: int, threshold: float = 1e-3, update_every: int = 16) -> None:
        self.resolution = int(resolution)
        self.threshold = float(threshold)
        self.update_every = int(update_every)
        self.cells: Tensor | None = None  # [R, R, R] bool, x-major, over [-bound, bound]^3
        self.bound = 1.0

    @torch.no_grad()
    def refresh(self, geometry: Geometry, step_size: float) -> None:
        """Recompute the grid from the geometry's density (step_size: the renderer's sample spacing)."""
        res, bound = self.resolution, geometry.bound
        device = next(geometry.parameters()).device
        # Probe the (res + 1)^3 cell corners (deterministic) and keep, per cell, the maximum of its 8.
        corners = torch.linspace(-bound, bound, res + 1, device=device)
        probes = torch.stack(torch.meshgrid(corners, corners, corners, indexing="ij"), -1).reshape(-1, 3)
        sigma = torch.cat([geometry.density(chunk) for chunk in probes.split(65536)])
        tau = F.max_pool3d(sigma.view(1, 1, *(res + 1,) * 3), 2, stride=1) * step_size
        occupied = (tau > self.threshold).float()
        self.cells = F.max_pool3d(occupied, 3, stride=1, padding=1)[0, 0] > 0
        if not self.cells.any():
            # An empty grid would freeze an empty field (no sample would get a gradient): skip nothing.
            self.cells.fill_(True)
        self.bound = bound

    def occupied(self, x: Tensor) -> Tensor:
        """Sample points [M, 3] -> indices [K] of those in occupied cells."""
        assert self.cells is not None
        res = self.resolution
        cell = ((x + self.bound) / (2.0 * self.bound) * res).long().clamp(0, res - 1)
        flat = (cell[:, 0] * res + cell[:, 1]) * res + cell[:, 2]
        return self.cells.reshape(-1).to(x.device)[flat].nonzero().squeeze(1)

    def state_dict(self) -> dict[str, Any]:
        return {"cells": None if self.cells is None else self.cells.cpu(), "bound": self.bound}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cells = state.get("cells")
        self.bound = float(state.get("bound", 1.0))
