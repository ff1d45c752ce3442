"""A triplane geometry: the field a prompt-amortized generator outputs (ScaleDreamer).

Three axis-aligned feature planes (xy, xz, yz; EG3D's triplane) of C channels at R x R texels; a point's
feature is the concatenation of its three bilinear samples [3C] (ScaleDreamer's `sample_from_planes`),
decoded by small MLP heads into a density and an albedo, the density in one of three ways (`density`):

    "volsdf":   d(x) = |x| - r0 + f(planes(x)),  sigma(x) = (1 / beta) Psi_beta(-d(x))
                VolSDF (as `sdf.py`, with ScaleDreamer's fixed beta); surface d = 0; eikonal term
    "softplus": sigma(x) = softplus(f(planes(x)) + blob(x)),  blob = b0 (1 - |x| / r0)
                the NeRF density of `nerf.py` (Magic3D's blob); surface at the export's automatic level
    "exp":      sigma(x) = softplus(blob(x)) exp(f(planes(x)))
                the same ball scaled by a factor (`nerf.py`'s exp activation); surface at the level
                whose silhouettes match the field's renders (`export.silhouette_level`)
    albedo(x) = sigmoid(g(planes(x)))

f's last layer starts at 0, so every field starts as the sphere (or the soft ball) of radius r0.

The planes are either a parameter (a field of its own: a per-prompt run, or a Refine that starts from a
generator's output) or a tensor computed by a generator (`backend.engine.generator`), through which
training gradients flow back to the generator; the heads can be shared with that generator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend.engine.geometry.base import Geometry
from backend.engine.geometry.gridfield import mlp
from backend.engine.geometry.nerf import MAX_LOG_GAIN, magic3d_blob
from backend.engine.geometry.sdf import volsdf_density

if TYPE_CHECKING:
    from backend.config import GenerationConfig

# Plane k holds the features of the coordinate pair PLANE_AXES[k]: xy, xz, yz.
PLANE_AXES = ((0, 1), (0, 2), (1, 2))
DENSITIES = ("volsdf", "softplus", "exp")


@dataclass
class TriplaneConfig:
    resolution: int = 32  # R, texels per plane side
    channels: int = 16  # C, features per plane
    hidden_dim: int = 32
    n_hidden_layers: int = 1
    # "volsdf", "softplus" or "exp" (module docstring)
    density: str = "softplus"
    sphere_radius: float = 0.5  # the initial shape (r0)
    blob_density: float = 10.0  # softplus: b0
    # VolSDF's Laplace scale, fixed (ScaleDreamer: "trainable_variance: false" at 1 / 30); a few render
    # samples wide at 32 samples per ray, so the surface gets gradients from both sides.
    beta: float = 0.05
    bound: float = 1.0
    normal_eps: float = 1e-2
    eikonal_points: int = 256
    cutoff: float = 6.0  # density exactly 0 farther than this many beta outside (see `sdf.py`)


def sample_triplane(planes: Tensor, x_unit: Tensor) -> Tensor:
    """planes [3, C, R, R], points [N, 3] in [-1, 1] -> features [N, 3C] (bilinear, border-clamped)."""
    grid = torch.stack([x_unit[:, list(axes)] for axes in PLANE_AXES]).unsqueeze(1)  # [3, 1, N, 2]
    # grid_sample reads grid[..., 0] as the column (width) coordinate: plane k's columns follow its first axis.
    feats = F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return feats.squeeze(2).permute(2, 0, 1).reshape(x_unit.shape[0], -1)  # [N, 3C]


class TriplaneHeads(nn.Module):
    """The shared decoder of triplane features: signed-distance offset f and albedo logits g."""

    def __init__(self, cfg: TriplaneConfig) -> None:
        super().__init__()
        n_in = 3 * cfg.channels
        self.sdf_mlp = mlp(n_in, cfg.hidden_dim, cfg.n_hidden_layers, 1)
        self.albedo_mlp = mlp(n_in, cfg.hidden_dim, cfg.n_hidden_layers, 3)
        with torch.no_grad():  # f = 0 at the start: exactly the sphere, whatever the planes hold
            last = self.sdf_mlp[-1]
            assert isinstance(last, nn.Linear)
            last.weight.zero_()
            last.bias.zero_()


class TriplaneField(Geometry):
    """d(x), sigma(x) and albedo(x) from three feature planes (torch's global RNG draws the parameters).

    planes: None -> zeros as a parameter (a fresh sphere); a tensor that is part of an autograd graph (a
    generator's output) is kept as it is, so gradients reach the generator; any other tensor is copied into
    a parameter. heads: shared heads (a generator's), else new ones.
    """

    kind = "triplane"
    planes: Tensor
    beta: Tensor  # a buffer

    def __init__(
        self,
        cfg: TriplaneConfig | None = None,
        device: torch.device | str = "cpu",
        planes: Tensor | None = None,
        heads: TriplaneHeads | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or TriplaneConfig()
        if cfg.density not in DENSITIES:
            raise ValueError(f"unknown triplane density {cfg.density!r}; use {', '.join(DENSITIES)}")
        self.cfg = cfg
        self.bound = float(cfg.bound)
        self.heads = heads if heads is not None else TriplaneHeads(cfg).to(device)
        shape = (3, cfg.channels, cfg.resolution, cfg.resolution)
        if planes is None:
            self.planes = nn.Parameter(torch.zeros(shape, device=device))
        elif planes.requires_grad and not planes.is_leaf:
            if tuple(planes.shape) != shape:
                raise ValueError(f"planes must be {shape}, got {tuple(planes.shape)}")
            self.planes = planes  # a generator's output: not this field's parameter
        else:
            self.planes = nn.Parameter(planes.detach().clone().to(device).reshape(shape))
        self.register_buffer("beta", torch.tensor(float(cfg.beta), device=device))

    @property
    def feature_dim(self) -> int:
        return 3 * self.cfg.channels

    def _encode(self, x: Tensor) -> Tensor:
        return sample_triplane(self.planes, x / self.bound)

    @property
    def is_sdf(self) -> bool:
        return self.cfg.density == "volsdf"

    def _sdf_from_features(self, h: Tensor, x: Tensor) -> Tensor:
        """The signed distance (volsdf), minus the pre-softplus density (softplus) or minus the log density
        (exp): negative inside."""
        f = cast(Tensor, self.heads.sdf_mlp(h)).squeeze(-1)
        distance: Tensor = torch.linalg.vector_norm(x, dim=-1)
        if self.is_sdf:
            return distance - self.cfg.sphere_radius + f
        blob = magic3d_blob(distance, self.cfg.blob_density, self.cfg.sphere_radius)
        if self.cfg.density == "exp":
            log_ball = torch.log(F.softplus(blob).clamp(min=1e-30))
            return -(f.clamp(-MAX_LOG_GAIN, MAX_LOG_GAIN) + log_ball)
        return -(f + blob)

    def sdf(self, x: Tensor) -> Tensor:
        """x [N, 3] world -> signed distance [N] (negative inside; softplus: minus the raw density)."""
        return self._sdf_from_features(self._encode(x), x)

    def _sigma(self, d: Tensor, x: Tensor) -> Tensor:
        inside = (x.abs() <= self.bound).all(-1)
        if not self.is_sdf:
            sigma = torch.exp(-d) if self.cfg.density == "exp" else F.softplus(-d)
            return torch.where(inside, sigma, torch.zeros_like(sigma))
        return volsdf_density(d, inside, self.beta, self.cfg.cutoff)

    def density(self, x: Tensor) -> Tensor:
        return self._sigma(self.sdf(x), x)

    def density_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self._encode(x)
        return self._sigma(self._sdf_from_features(h, x), x), h

    def albedo_from_features(self, features: Tensor) -> Tensor:
        return torch.sigmoid(cast(Tensor, self.heads.albedo_mlp(features)))

    def sdf_gradient(self, x: Tensor) -> Tensor:
        """grad d at x [N, 3] by forward differences, differentiable -> [N, 3]."""
        eps = self.cfg.normal_eps
        offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps
        probes = torch.cat([x.unsqueeze(0), x.unsqueeze(0) + offsets[:, None]])
        d = self.sdf(probes.reshape(-1, 3)).view(4, -1)
        return (d[1:] - d[:1]).t() / eps

    def normals(self, x: Tensor, sigma: Tensor | None = None) -> Tensor:
        """grad d normalized (softplus, exp: -grad of the raw or log density, as `nerf.py`'s -grad sigma)."""
        return F.normalize(self.sdf_gradient(x), dim=-1, eps=1e-6)

    def regularization(self, generator: torch.Generator) -> dict[str, Tensor]:
        """The eikonal term (|grad d| - 1)^2 at `eikonal_points` uniform points of the bound box (volsdf)."""
        if not self.is_sdf:
            return {}
        u = torch.rand(self.cfg.eikonal_points, 3, generator=generator, device=generator.device)
        grad = self.sdf_gradient((u.to(self.beta.device) * 2.0 - 1.0) * self.bound)
        norm: Tensor = torch.linalg.vector_norm(grad, dim=-1)
        return {"eikonal": (norm - 1.0).square().mean()}

    def level_rule(self) -> str:
        """exp: "silhouette" (as an exp-density NeRF's); softplus: "density"."""
        return "silhouette" if self.cfg.density == "exp" else "density"

    def surface_level(self) -> float | None:
        """volsdf: the density on d = 0, 1 / (2 beta); else None (the export's automatic level)."""
        return float(0.5 / self.beta.detach()) if self.is_sdf else None

    def param_groups(self, cfg: GenerationConfig) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = [
            {"name": "mlp", "params": list(self.heads.parameters()), "lr": cfg.lr_mlp}
        ]
        if isinstance(self.planes, nn.Parameter):
            groups.insert(0, {"name": "grid", "params": [self.planes], "lr": cfg.lr_grid})
        return groups

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self.cfg)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: torch.device | str = "cpu") -> TriplaneField:
        return cls(TriplaneConfig(**{k: v for k, v in spec.items() if k != "kind"}), device=device)
