"""What the hash-grid geometries (`nerf.py`, `sdf.py`) share: their grid, heads and normals settings, the
encoding with its coarse-to-fine levels, and the MLP heads (also the triplane's)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from backend.engine.geometry.hashgrid import HashGridConfig, TcnnHashGrid, TorchHashGrid, make_hash_grid
from backend.engine.geometry.progressive import ProgressiveLevels


@dataclass
class GridFieldConfig:
    # Hash grid (16 levels x 2 features, 2^19 entries, resolutions 16 .. 2048: Instant-NGP's NeRF grid).
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048
    # MLP heads: hidden width and number of hidden layers.
    hidden_dim: int = 64
    n_hidden_layers: int = 1
    # The field lives in [-bound, bound]^3 (world units).
    bound: float = 1.0
    # Step of the finite differences for normals, in world units (the finest cell is 2 bound / 2048).
    normal_eps: float = 1e-2
    # "central": (f(x + e) - f(x - e)) / 2 eps, 6 evaluations per point, error O(eps^2);
    # "forward": (f(x + e) - f(x)) / eps, 3 evaluations when the caller has f(x), error O(eps).
    normal_stencil: str = "central"
    # Coarse-to-fine levels (`progressive.py`): this many levels at the start, all by `levels_ramp` of
    # the run; 0: every level from the start.
    levels_start: int = 0
    levels_ramp: float = 0.5

    @property
    def hash_grid(self) -> HashGridConfig:
        return HashGridConfig(
            n_levels=self.n_levels,
            n_features_per_level=self.n_features_per_level,
            log2_hashmap_size=self.log2_hashmap_size,
            base_resolution=self.base_resolution,
            finest_resolution=self.finest_resolution,
        )


C = TypeVar("C", bound=GridFieldConfig)


def cpu_sized(cfg: C) -> C:
    """`cfg` with the CPU grid: 12 levels, 2^15 entries, finest 512, forward-difference normals (3 density
    evaluations per visible sample instead of 6; on a trained field they differ from central ones by ~8
    degrees, as much as halving normal_eps does). For 32-64 px renders, where the full grid's 12M
    parameters dominate a step."""
    return dataclasses.replace(
        cfg, n_levels=12, log2_hashmap_size=15, finest_resolution=512, normal_stencil="forward"
    )


def grid_encoding(
    cfg: GridFieldConfig, device: torch.device | str
) -> tuple[TorchHashGrid | TcnnHashGrid, ProgressiveLevels]:
    """The field's hash-grid encoding and the mask of its coarse-to-fine levels."""
    encoding = make_hash_grid(cfg.hash_grid, device)
    levels = ProgressiveLevels(cfg.n_levels, cfg.n_features_per_level, cfg.levels_start, cfg.levels_ramp)
    return encoding, levels.to(device)


def mlp(n_in: int, hidden: int, n_hidden_layers: int, n_out: int) -> nn.Sequential:
    """A head: n_hidden_layers x (Linear, ReLU), then Linear to n_out."""
    layers: list[nn.Module] = []
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(n_in, hidden), nn.ReLU(inplace=True)]
        n_in = hidden
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)
