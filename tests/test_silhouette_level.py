"""The silhouette-matched surface level (`export.silhouette_level`, `export.auto_level`).

A Gaussian blob A exp(-r^2 / s^2) has a closed form: a ray passing at distance b from the centre has the
optical depth A s sqrt(pi) exp(-b^2 / s^2) and the peak density A exp(-b^2 / s^2), so it renders at
opacity 1/2 exactly where its peak is ln 2 / (s sqrt(pi)), for any A: the level whose surface shows the
rendered silhouette.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from backend.config import ExportConfig
from backend.engine import export as ex
from backend.engine.geometry.nerf import FieldConfig, RadianceField
from backend.errors import InvalidConfig


class GaussianField:
    bound = 1.0

    def __init__(self, amplitude: float, width: float, fog: float = 0.0) -> None:
        self.amplitude, self.width, self.fog = amplitude, width, fog

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self.fog + self.amplitude * torch.exp(-(x.norm(dim=-1) ** 2) / self.width**2)


class OwnSurface(GaussianField):
    def surface_level(self) -> float:
        return 7.0


def expected_level(width: float) -> float:
    return math.log(2.0) / (width * math.sqrt(math.pi))


@pytest.mark.parametrize(("amplitude", "width"), [(20.0, 0.25), (200.0, 0.25), (60.0, 0.12)])
def test_level_of_a_gaussian_blob_is_where_its_rendering_turns_opaque(amplitude: float, width: float) -> None:
    grid = ex.density_grid(GaussianField(amplitude, width), 96, empty_below=None)
    level = ex.silhouette_level(grid, 1.0)
    # Candidate levels are ~7% apart at these amplitudes; the grid's interpolation adds a little.
    assert level == pytest.approx(expected_level(width), rel=0.1)
    # ... and so the mesh's radius is the rendered silhouette's, whatever the amplitude.
    verts, _ = ex.marching_cubes_mesh(grid, 1.0, level)
    radius = width * math.sqrt(math.log(amplitude / expected_level(width)))
    assert float(np.linalg.norm(verts, axis=1).mean()) == pytest.approx(radius, rel=0.05)
    # The density rule knows nothing of the rendering (its level follows the peak): a smaller object.
    assert ex.auto_threshold(grid) > 2.0 * level


def test_haze_and_fog_fall_back_to_the_density_rule() -> None:
    haze = ex.density_grid(GaussianField(3.0, 0.05), 64, empty_below=None)  # optical depth <= 0.27
    assert ex.silhouette_level(haze, 1.0) == pytest.approx(ex.auto_threshold(haze))
    fog = ex.density_grid(GaussianField(60.0, 0.2, fog=2.0), 64, empty_below=None)  # every view opaque
    assert ex.silhouette_level(fog, 1.0) == pytest.approx(ex.auto_threshold(fog))


def test_an_explicit_threshold_then_the_fields_own_surface_win_over_the_rule() -> None:
    field = OwnSurface(60.0, 0.2)
    grid = ex.density_grid(field, 48, empty_below=None)
    silhouette = ExportConfig(auto_level="silhouette")
    assert ex.surface_threshold(field, grid, ExportConfig(threshold=4.0, auto_level="silhouette")) == 4.0
    assert ex.surface_threshold(field, grid, silhouette) == 7.0
    plain = GaussianField(60.0, 0.2)
    assert ex.surface_threshold(plain, grid, silhouette) == pytest.approx(ex.silhouette_level(grid, 1.0))
    assert ex.surface_threshold(plain, grid, ExportConfig(auto_level="density")) == pytest.approx(
        ex.auto_threshold(grid)
    )


class SilhouetteKind(GaussianField):
    def level_rule(self) -> str:
        return "silhouette"


def test_auto_follows_the_fields_kind() -> None:
    auto = ExportConfig()
    assert auto.auto_level == "auto"
    grid = ex.density_grid(GaussianField(60.0, 0.2), 48, empty_below=None)
    assert ex.level_rule(GaussianField(60.0, 0.2), auto) == "density"  # a field that names no rule
    assert ex.surface_threshold(GaussianField(60.0, 0.2), grid, auto) == pytest.approx(
        ex.auto_threshold(grid)
    )
    assert ex.surface_threshold(SilhouetteKind(60.0, 0.2), grid, auto) == pytest.approx(
        ex.silhouette_level(grid, 1.0)
    )
    assert ex.level_rule(SilhouetteKind(60.0, 0.2), ExportConfig(auto_level="density")) == "density"
    small = FieldConfig.small()
    assert RadianceField(dataclasses.replace(small, density_activation="exp")).level_rule() == "silhouette"
    assert RadianceField(dataclasses.replace(small, density_activation="softplus")).level_rule() == "density"


class UnknownKind(GaussianField):
    def level_rule(self) -> str:
        return "median"


def test_an_unknown_rule_is_refused_naming_the_setting() -> None:
    with pytest.raises(InvalidConfig, match="export.auto_level"):
        ExportConfig(auto_level="median").validate()
    # A geometry naming a rule that does not exist is an error, not a silent density level.
    with pytest.raises(ValueError, match="UnknownKind.level_rule.. names 'median'"):
        ex.level_rule(UnknownKind(60.0, 0.2), ExportConfig())
