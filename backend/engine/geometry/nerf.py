"""A NeRF-style geometry: hash-grid encoding + small MLPs for density and albedo.

Density follows Magic3D / threestudio: sigma = softplus(raw + blob), where the "blob" bias
blob_density * (1 - |x| / blob_radius) starts the optimization from a soft ball at the origin
(DreamFusion section 3.1 uses a similar density bias). With `density_activation` "exp" the same ball is
scaled instead: sigma = softplus(blob) * exp(raw), so a step of the optimizer changes the density by a
factor rather than by an amount (Instant-NGP's exponential activation). Points outside the bound box
have no density.

The blob is both the start and a permanent bias: its slope (log density falling ~8 per unit of radius
at the ball's surface) is what a cube's corners or a torus's hole must be carved against. `blob_bias`
keeps only that share of it; the rest of the bias is a wall (`wall_bias`: flat inside WALL_RADIUS of the
bound, falling steeply past it, so empty space stays empty), and a fresh field is fitted to start as the
ball all the same (`fit_start`, threestudio's "shape_init" for its SDFs). In log space for "exp" (the
bias is a product of the two, sigma = softplus(blob)^a softplus(wall)^(1 - a) exp(raw)), before the
activation for "softplus" (raw + a blob + (1 - a) wall).
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
WALL_RADIUS = 0.8  # fraction of the bound: `wall_bias` is flat inside it
WALL_POWER = 8.0  # and falls as 1 - (|x| / radius)^8 past it: -15 at 1.15 radius for a height of 10
START_FIT_STEPS = 200  # `fit_start`: Adam steps of 4096 points (about 2 s on one CPU thread)
START_FIT_LEVELS = 3  # of the coarsest hash-grid levels (resolution 16 to ~30), the only ones it fits
START_FIT_RADIUS = 0.9  # fraction of the bound: it fits the points within this ball


def magic3d_blob(distance: Tensor, blob_density: float, blob_radius: float) -> Tensor:
    """Magic3D's density blob at distances |x| from the origin: blob_density * (1 - |x| / blob_radius)."""
    return blob_density * (1.0 - distance / blob_radius)


def _uniform_in_ball(n: int, radius: float, gen: torch.Generator) -> Tensor:
    """n points drawn uniformly in the ball of `radius` about the origin, [n, 3]."""
    direction = F.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    return direction * torch.rand(n, 1, generator=gen) ** (1.0 / 3.0) * radius


def wall_bias(distance: Tensor, height: float, radius: float) -> Tensor:
    """A density bias flat at `height` inside `radius` and falling steeply past it:
    height * (1 - (|x| / radius)^WALL_POWER)."""
    return height * (1.0 - (distance / radius) ** WALL_POWER)


@dataclass
class FieldConfig(GridFieldConfig):
    # Density bias before the softplus: blob_density * (1 - |x| / blob_radius).
    blob_density: float = 10.0
    blob_radius: float = 0.5
    # Share of the blob kept as a permanent bias (1: Magic3D's); the rest is `wall_bias` (module doc).
    blob_bias: float = 1.0
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
        if not 0.0 <= cfg.blob_bias <= 1.0:
            raise ValueError(f"blob_bias must be within [0, 1], got {cfg.blob_bias}")
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
        """Magic3D's blob (`magic3d_blob`), [N]: the starting ball, before the activation."""
        return magic3d_blob(x.norm(dim=-1), self.cfg.blob_density, self.cfg.blob_radius)

    def _wall(self, x: Tensor) -> Tensor:
        return wall_bias(x.norm(dim=-1), self.cfg.blob_density, WALL_RADIUS * self.bound)

    def _log_bias(self, x: Tensor) -> Tensor:
        """ "exp": log of the density's permanent factor, [N] (`blob_bias` of the ball's, the rest the wall's)."""
        a = self.cfg.blob_bias
        log_ball = torch.log(F.softplus(self.density_bias(x)).clamp(min=1e-30))
        if a == 1.0:
            return log_ball
        log_wall = torch.log(F.softplus(self._wall(x)).clamp(min=1e-30))
        return a * log_ball + (1.0 - a) * log_wall

    def _shift(self, x: Tensor) -> Tensor:
        """ "softplus": the permanent shift before the activation, [N] (`blob_bias` of the ball's)."""
        a = self.cfg.blob_bias
        ball = self.density_bias(x)
        return ball if a == 1.0 else a * ball + (1.0 - a) * self._wall(x)

    def _sigma(self, raw: Tensor, x: Tensor) -> Tensor:
        raw = raw.squeeze(-1)
        if self.cfg.density_activation == "exp":
            gain = torch.exp(raw.clamp(-MAX_LOG_GAIN, MAX_LOG_GAIN))
            if self.cfg.blob_bias == 1.0:
                sigma = F.softplus(self.density_bias(x)) * gain
            else:
                sigma = torch.exp(self._log_bias(x)) * gain
        else:
            sigma = F.softplus(raw + self._shift(x))
        return torch.where(self._inside(x), sigma, torch.zeros_like(sigma))

    def fit_start(self, steps: int = START_FIT_STEPS, n_points: int = 4096) -> float:
        """Fit the density head's raw output so that the field starts as the blob whatever share of it is
        permanent (`blob_bias` < 1): raw -> the ball's bias minus the permanent one, at uniform points of a
        ball of START_FIT_RADIUS (a fixed draw: the fit depends on the field's initial parameters only).
        Only the START_FIT_LEVELS coarsest hash-grid levels take part, so the start is as smooth as the
        ball: fitted with every level, hash collisions left bumps of ~0.02 in its radius and normals ~40
        degrees off, which score distillation then grew into pits. Returns the last mean squared error
        (log-density units for "exp"). A field keeping all of the ball is left as it is."""
        if self.cfg.blob_bias == 1.0:
            return 0.0
        device = next(self.density_mlp.parameters()).device
        gen = torch.Generator().manual_seed(0)
        coarse = torch.zeros(self.feature_dim, device=device)  # only the coarsest levels learn the ball
        coarse[: START_FIT_LEVELS * self.cfg.n_features_per_level] = 1.0
        params = list(self.encoding.parameters()) + list(self.density_mlp.parameters())
        opt = torch.optim.Adam(params, lr=1e-2)
        error = 0.0
        for _ in range(steps):
            x = _uniform_in_ball(n_points, START_FIT_RADIUS * self.bound, gen).to(device)
            with torch.no_grad():
                if self.cfg.density_activation == "exp":
                    ball = torch.log(F.softplus(self.density_bias(x)).clamp(min=1e-30))
                    target = ball - self._log_bias(x)
                else:
                    target = self.density_bias(x) - self._shift(x)
                # Far past the wall both biases leave no density; the raw output need not follow them.
                target = target.clamp(-MAX_LOG_GAIN, MAX_LOG_GAIN)
            loss = F.mse_loss(self.density_mlp(self._encode(x) * coarse).squeeze(-1), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            error = float(loss.detach())
        return error

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
