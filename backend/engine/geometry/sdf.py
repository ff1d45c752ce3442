"""A signed-distance geometry rendered as volume density (VolSDF; Yariv et al. 2021, eq. 2-3).

    d(x) = |x| - r0 + f(x)                       the network f starts at 0: the run starts from a sphere
    sigma(x) = (1 / beta) Psi_beta(-d(x))        Psi_beta: CDF of the zero-mean Laplace law of scale beta

so the density is 1 / beta well inside, 1 / (2 beta) on the surface d = 0 and decays as exp(-d / beta)
outside; beta follows a schedule from `beta_start` to `beta_end` (VolSDF learns it over 100k+ steps; a
run here has a few hundred, so it is scheduled coarse to fine instead). Normals are the normalized gradient of d (finite differences). The eikonal term
(|grad d| - 1)^2 (Gropp et al. 2020), at random points of the bound box, keeps d a distance; the run adds
it weighted by `lambda_eikonal`. The surface is d = 0, whose density `surface_level()` gives the export.
ScaleDreamer's amortized generators render their geometry this way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend.engine.geometry.base import Geometry
from backend.engine.geometry.gridfield import GridFieldConfig, cpu_sized, grid_encoding, mlp

if TYPE_CHECKING:
    from backend.config import GenerationConfig


@dataclass
class SDFConfig(GridFieldConfig):
    sphere_radius: float = 0.5  # the initial shape
    # beta goes geometrically from beta_start to beta_end over the run (coarse to fine: a soft surface
    # gathers gradients from far while the shape forms, a sharp one is what the export meets).
    beta_start: float = 0.1
    beta_end: float = 0.1
    eikonal_points: int = 1024
    # The density is exactly 0 farther than this many beta outside the surface (the Laplace tail there is
    # below 0.3% of the surface density): the empty-space grid can then skip the haze around the object.
    cutoff: float = 6.0

    @classmethod
    def small(cls) -> SDFConfig:
        """The CPU grid (`gridfield.cpu_sized`, as `FieldConfig.small`) with 512 eikonal points."""
        return cpu_sized(cls(eikonal_points=512))


def laplace_cdf(s: Tensor, beta: Tensor) -> Tensor:
    """Psi_beta(s): 0.5 exp(s / beta) for s <= 0, 1 - 0.5 exp(-s / beta) above (no overflow either side)."""
    half_tail = 0.5 * torch.exp(-s.abs() / beta)
    return torch.where(s <= 0, half_tail, 1.0 - half_tail)


def volsdf_density(d: Tensor, inside: Tensor, beta: Tensor, cutoff: float) -> Tensor:
    """sigma = Psi_beta(-d) / beta where `inside` (the bound box) and d < cutoff beta, else exactly 0."""
    sigma = laplace_cdf(-d, beta) / beta
    keep = inside & (d < cutoff * beta)
    return torch.where(keep, sigma, torch.zeros_like(sigma))


class SDFField(Geometry):
    """d(x), sigma(x) and albedo(x) for world points x [N, 3] in [-bound, bound]^3 (torch's global RNG
    draws the parameters: seed it first)."""

    kind = "sdf"
    beta: Tensor  # a buffer

    def __init__(self, cfg: SDFConfig | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__()
        cfg = cfg or SDFConfig()
        self.cfg = cfg
        self.bound = float(cfg.bound)
        self.encoding, self.levels = grid_encoding(cfg, device)
        n_enc = self.encoding.n_output_dims
        self.sdf_mlp = mlp(n_enc, cfg.hidden_dim, cfg.n_hidden_layers, 1).to(device)
        self.albedo_mlp = mlp(n_enc, cfg.hidden_dim, cfg.n_hidden_layers, 3).to(device)
        with torch.no_grad():  # f = 0 at the start: exactly the sphere
            last = self.sdf_mlp[-1]
            assert isinstance(last, nn.Linear)
            last.weight.zero_()
            last.bias.zero_()
        # The current beta (a buffer: saved with the weights, so an export meets the surface the run ended with).
        self.register_buffer("beta", torch.tensor(float(cfg.beta_start), device=device))

    @property
    def feature_dim(self) -> int:
        return int(self.encoding.n_output_dims)

    def on_step(self, step: int, total: int) -> None:
        f = min(max(step / max(total - 1, 1), 0.0), 1.0)
        self.beta.fill_(self.cfg.beta_start * (self.cfg.beta_end / self.cfg.beta_start) ** f)
        self.levels.update(step, total)

    def _encode(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.levels(self.encoding((x + self.bound) / (2.0 * self.bound))))

    def _sdf_from_features(self, h: Tensor, x: Tensor) -> Tensor:
        f = cast(Tensor, self.sdf_mlp(h)).squeeze(-1)
        distance: Tensor = torch.linalg.vector_norm(x, dim=-1)
        return distance - self.cfg.sphere_radius + f

    def sdf(self, x: Tensor) -> Tensor:
        """x [N, 3] world -> signed distance [N] (negative inside)."""
        return self._sdf_from_features(self._encode(x), x)

    def _sigma(self, d: Tensor, x: Tensor) -> Tensor:
        return volsdf_density(d, (x.abs() <= self.bound).all(-1), self.beta, self.cfg.cutoff)

    def density(self, x: Tensor) -> Tensor:
        return self._sigma(self.sdf(x), x)

    def density_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self._encode(x)
        return self._sigma(self._sdf_from_features(h, x), x), h

    def albedo_from_features(self, features: Tensor) -> Tensor:
        return torch.sigmoid(cast(Tensor, self.albedo_mlp(features)))

    def albedo(self, x: Tensor) -> Tensor:
        return self.albedo_from_features(self._encode(x))

    def sdf_gradient(self, x: Tensor) -> Tensor:
        """grad d at x [N, 3] by finite differences (`normal_stencil`), differentiable -> [N, 3]."""
        eps = self.cfg.normal_eps
        offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps
        if self.cfg.normal_stencil == "forward":
            probes = torch.cat([x.unsqueeze(0), x.unsqueeze(0) + offsets[:, None]])
            d = self.sdf(probes.reshape(-1, 3)).view(4, -1)
            return (d[1:] - d[:1]).t() / eps
        probes = torch.cat([x.unsqueeze(0) + offsets[:, None], x.unsqueeze(0) - offsets[:, None]])
        d = self.sdf(probes.reshape(-1, 3)).view(6, -1)
        return (d[:3] - d[3:]).t() / (2.0 * eps)

    def normals(self, x: Tensor, sigma: Tensor | None = None) -> Tensor:
        return F.normalize(self.sdf_gradient(x), dim=-1, eps=1e-6)

    def regularization(self, generator: torch.Generator) -> dict[str, Tensor]:
        """The eikonal term at `eikonal_points` uniform points of the bound box."""
        device = self.beta.device
        u = torch.rand(self.cfg.eikonal_points, 3, generator=generator, device=generator.device).to(device)
        grad = self.sdf_gradient((u * 2.0 - 1.0) * self.bound)
        norm: Tensor = torch.linalg.vector_norm(grad, dim=-1)
        return {"eikonal": (norm - 1.0).square().mean()}

    def surface_level(self) -> float:
        """The density on d = 0: 1 / (2 beta)."""
        return float(0.5 / self.beta.detach())

    def param_groups(self, cfg: GenerationConfig) -> list[dict[str, Any]]:
        mlps = list(self.sdf_mlp.parameters()) + list(self.albedo_mlp.parameters())
        return [
            {"name": "grid", "params": list(self.encoding.parameters()), "lr": cfg.lr_grid},
            {"name": "mlp", "params": mlps, "lr": cfg.lr_mlp},
        ]

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self.cfg)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: torch.device | str = "cpu") -> SDFField:
        return cls(SDFConfig(**{k: v for k, v in spec.items() if k != "kind"}), device=device)
