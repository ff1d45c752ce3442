"""The geometry interface: a 3D field the renderer draws and the optimizer shapes.

A geometry answers, for world points x [N, 3] inside [-bound, bound]^3: volume density sigma [N] >= 0
(zero outside the bound), albedo [N, 3] in [0, 1] and unit outward normals [N, 3]. It is an `nn.Module`:
its parameters are trained through `param_groups` and saved with `state_dict` (field checkpoints,
`backend.engine.checkpoint`); `spec()` is the plain data that rebuilds an untrained copy of it, so a
checkpoint can be loaded without knowing which geometry made it (`backend.engine.geometry.build`).

Implementations: `RadianceField` (hash grid + MLP density, NeRF/Magic3D). A new geometry subclasses
`Geometry`, sets `kind`, and is listed in `backend.engine.geometry.GEOMETRIES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from backend.config import GenerationConfig


class Geometry(nn.Module):
    kind: ClassVar[str]
    bound: float

    @property
    def feature_dim(self) -> int:
        """E, the width of `density_and_features`' features."""
        raise NotImplementedError

    def density(self, x: Tensor) -> Tensor:
        """x [N, 3] world -> sigma [N] >= 0."""
        raise NotImplementedError

    def density_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, 3] -> (sigma [N], features [N, E]); with `albedo_from_features` a renderer evaluates the
        albedo only where samples are visible."""
        raise NotImplementedError

    def albedo_from_features(self, features: Tensor) -> Tensor:
        """features [N, E] -> albedo [N, 3] in [0, 1]."""
        raise NotImplementedError

    def albedo(self, x: Tensor) -> Tensor:
        """x [N, 3] world -> albedo [N, 3] in [0, 1]."""
        return self.albedo_from_features(self.density_and_features(x)[1])

    def normals(self, x: Tensor, sigma: Tensor | None = None) -> Tensor:
        """x [N, 3] -> unit outward normals [N, 3], differentiable with respect to the parameters
        (sigma [N]: density(x) when the caller has it)."""
        raise NotImplementedError

    def param_groups(self, cfg: GenerationConfig) -> list[dict[str, Any]]:
        """Adam parameter groups with their learning rates."""
        raise NotImplementedError

    def on_step(self, step: int, total: int) -> None:
        """Called before each optimization step (coarse-to-fine schedules of the geometry); no-op here."""

    def regularization(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Extra loss terms of this geometry, unweighted (e.g. an SDF's eikonal term, "eikonal"); the run
        adds each weighted by the config's `lambda_<name>`. None by default (and no random draws)."""
        return {}

    def level_rule(self) -> str:
        """The automatic marching-cubes level rule that suits this geometry's fields (`export.auto_level`
        "auto"): "density" here; an exp-density NeRF's is "silhouette"."""
        return "density"

    def surface_level(self) -> float | None:
        """The density on the geometry's own surface (an SDF's zero level), which the export then uses as
        its marching-cubes level; None: the export picks a level from the density grid."""
        return None

    def spec(self) -> dict[str, Any]:
        """{"kind": ..., plus the constructor's plain-data arguments}: enough to rebuild it."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: torch.device | str = "cpu") -> Geometry:
        """An untrained geometry from `spec()` data."""
        raise NotImplementedError
