"""A NeRF-style geometry: hash-grid encoding + small MLPs for density and albedo.

Density follows Magic3D / threestudio: sigma = softplus(raw + blob), where the "blob" bias
blob_density * (1 - |x| / blob_radius) starts the optimization from a soft ball at the origin
(DreamFusion section 3.1 uses a similar density bias). With `density_activation` "exp" the same ball is
scaled instead: sigma = softplus(blob) * exp(raw), so a step of the optimizer changes the density by a
factor rather than by an amount (Instant-NGP's exponential activation). Points outside the bound box
have no density.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.engine.geometry.base import Geometry
from backend.engine.geometry.gridfield import GridFieldConfig, cpu_sized, grid_encoding, mlp

if TYPE_CHECKING:
    from backend.config import GenerationConfig


DENSITY_ACTIVATIONS = ("softplus", "exp")
MAX_LOG_GAIN = 15.0  # "exp": the factor exp(raw) stays within e^-15 .. e^15 (and keeps a gradient inside)


def magic3d_blob(distance: Tensor, blob_density: float, blob_radius: float) -> Tensor:
    """Magic3D's density blob at distances |x| from the origin: blob_density * (1 - |x| / blob_radius)."""
    return blob_density * (1.0 - distance / blob_radius)


@dataclass
class FieldConfig(GridFieldConfig):
    # Density bias before the softplus: blob_density * (1 - |x| / blob_radius).
    blob_density: float = 10.0
    blob_radius: float = 0.5
    density_activation: str = "softplus"  # or "exp": softplus(blob) * exp(raw)

    @classmethod
    def small(cls) -> FieldConfig:
        """The lighter grid for CPU runs at 32-64 px renders (`gridfield.cpu_sized`)."""
        return cpu_sized(cls())


class RadianceField(Geometry):
    """sigma(x) and albedo(x) for world points x [N, 3] in [-bound, bound]^3.

    Parameters are created from torch's global RNG: call torch.manual_seed(seed) before building one.
    """

    kind = "nerf"

    def __init__(self, cfg: FieldConfig | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__()
        cfg = cfg or FieldConfig()
        if cfg.density_activation not in DENSITY_ACTIVATIONS:
            raise ValueError(
                f"unknown density activation {cfg.density_activation!r}; use {' or '.join(DENSITY_ACTIVATIONS)}"
            )
        self.cfg = cfg
        self.bound = float(cfg.bound)
        self.encoding, self.levels = grid_encoding(cfg, device)
        n_enc = self.encoding.n_output_dims
        self.density_mlp = mlp(n_enc, cfg.hidden_dim, cfg.n_hidden_layers, 1).to(device)
        self.albedo_mlp = mlp(n_enc, cfg.hidden_dim, cfg.n_hidden_layers, 3).to(device)

    @property
    def feature_dim(self) -> int:
        return int(self.encoding.n_output_dims)

    def on_step(self, step: int, total: int) -> None:
        self.levels.update(step, total)

    def _encode(self, x: Tensor) -> Tensor:
        """World points [N, 3] -> hash features [N, L * F] (positions mapped to [0, 1]^3)."""
        return cast(Tensor, self.levels(self.encoding((x + self.bound) / (2.0 * self.bound))))

    def _inside(self, x: Tensor) -> Tensor:
        return (x.abs() <= self.bound).all(-1)  # [N]

    def density_bias(self, x: Tensor) -> Tensor:
        """Magic3D's blob (`magic3d_blob`), [N]."""
        return magic3d_blob(x.norm(dim=-1), self.cfg.blob_density, self.cfg.blob_radius)

    def _sigma(self, raw: Tensor, x: Tensor) -> Tensor:
        raw = raw.squeeze(-1)
        if self.cfg.density_activation == "exp":
            sigma = F.softplus(self.density_bias(x)) * torch.exp(raw.clamp(-MAX_LOG_GAIN, MAX_LOG_GAIN))
        else:
            sigma = F.softplus(raw + self.density_bias(x))
        return torch.where(self._inside(x), sigma, torch.zeros_like(sigma))

    def density(self, x: Tensor) -> Tensor:
        """x [N, 3] world -> sigma [N] >= 0."""
        return self._sigma(self.density_mlp(self._encode(x)), x)

    def level_rule(self) -> str:
        """exp: "silhouette" (its distilled and converged fields both mesh best at the level matching their
        renders); softplus: "density" (its distilled fields render too faint for the silhouette rule)."""
        return "silhouette" if self.cfg.density_activation == "exp" else "density"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, 3] world -> (sigma [N], albedo [N, 3] in [0, 1]); the encoding is shared."""
        h = self._encode(x)
        return self._sigma(self.density_mlp(h), x), torch.sigmoid(self.albedo_mlp(h))

    def albedo(self, x: Tensor) -> Tensor:
        """x [N, 3] world -> albedo [N, 3] in [0, 1]."""
        return self.albedo_from_features(self._encode(x))

    def density_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, 3] -> (sigma [N], encoding features [N, E]); with `albedo_from_features`, lets a renderer
        evaluate the albedo head only where samples are visible."""
        h = self._encode(x)
        return self._sigma(self.density_mlp(h), x), h

    def albedo_from_features(self, h: Tensor) -> Tensor:
        """Encoding features [N, E] -> albedo [N, 3] in [0, 1]."""
        return torch.sigmoid(self.albedo_mlp(h))

    def normals(self, x: Tensor, sigma: Tensor | None = None) -> Tensor:
        """x [N, 3] -> unit outward normals [N, 3]: -grad sigma by finite differences (`cfg.normal_stencil`:
        central, 6 density evaluations; forward, 3 more given sigma = density(x) [N], else 4).

        Differentiable with respect to the field's parameters (the orientation loss and shading use it).
        """
        eps = self.cfg.normal_eps
        offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps  # [3, 3]
        if self.cfg.normal_stencil == "forward":
            probes = x.unsqueeze(0) + offsets[:, None]  # [3, N, 3]
            if sigma is None:
                sigma = self.density(x)
            ahead = self.density(probes.reshape(-1, 3)).view(3, -1)
            grad = (ahead - sigma.reshape(1, -1)).t() / eps  # [N, 3]
            return -F.normalize(grad, dim=-1, eps=1e-6)
        if self.cfg.normal_stencil != "central":
            raise ValueError(
                f'unknown normal stencil {self.cfg.normal_stencil!r}; use "central" or "forward"'
            )
        # One batched density call over [+e_x, +e_y, +e_z, -e_x, -e_y, -e_z] offsets.
        probes = torch.cat(
            [x.unsqueeze(0) + offsets[:, None], x.unsqueeze(0) - offsets[:, None]]
        )  # [6, N, 3]
        sigma = self.density(probes.reshape(-1, 3)).view(6, -1)
        grad = (sigma[:3] - sigma[3:]).t() / (2.0 * eps)  # [N, 3]
        return -F.normalize(grad, dim=-1, eps=1e-6)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self.cfg)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: torch.device | str = "cpu") -> RadianceField:
        return cls(FieldConfig(**{k: v for k, v in spec.items() if k != "kind"}), device=device)

    def param_groups(self, cfg: GenerationConfig) -> list[dict[str, Any]]:
        """Adam groups: the hash table at cfg.lr_grid, the MLP heads at cfg.lr_mlp."""
        mlps = list(self.density_mlp.parameters()) + list(self.albedo_mlp.parameters())
        return [
            {"name": "grid", "params": list(self.encoding.parameters()), "lr": cfg.lr_grid},
            {"name": "mlp", "params": mlps, "lr": cfg.lr_mlp},
        ]
