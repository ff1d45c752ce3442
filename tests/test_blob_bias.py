"""`blob_bias`: the share of Magic3D's starting ball kept as a permanent density bias (nerf geometry)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from backend.config import GenerationConfig
from backend.engine.geometry import make_geometry
from backend.engine.geometry.nerf import WALL_RADIUS, FieldConfig, RadianceField, magic3d_blob
from backend.errors import InvalidConfig

SMALL = FieldConfig.small()


def _axis(radii: torch.Tensor) -> torch.Tensor:
    """Points along a diagonal direction at the given distances from the origin, [N, 3]."""
    direction = F.normalize(torch.tensor([1.0, 0.6, -0.3]), dim=0)
    return radii[:, None] * direction


def _field(activation: str, blob_bias: float, seed: int = 0) -> RadianceField:
    torch.manual_seed(seed)
    return RadianceField(dataclasses.replace(SMALL, density_activation=activation, blob_bias=blob_bias))


@pytest.mark.parametrize("activation", ["exp", "softplus"])
def test_the_bias_without_the_ball_is_flat_inside_the_wall_and_falls_past_it(activation: str) -> None:
    field = _field(activation, 0.0)
    inside = _axis(torch.tensor([0.0, 0.3, 0.6]))
    past = _axis(torch.tensor([WALL_RADIUS * 1.05, WALL_RADIUS * 1.2]))
    with torch.no_grad():
        bias = field._log_bias if activation == "exp" else field._shift
        flat, outside = bias(inside), bias(past)
        ball = field.density_bias(inside)
    # The ball's bias falls by 12 between radius 0 and 0.6; the wall's by a tenth of that or less (1.0
    # before the softplus, 0.1 in log density).
    assert float(ball[0] - ball[2]) == pytest.approx(12.0, abs=1e-4)
    assert float(flat.max() - flat.min()) < 1.2
    assert float(outside[0]) < float(flat.min()) - 4.0 and float(outside[1]) < float(outside[0]) - 10.0


@pytest.mark.parametrize("activation", ["exp", "softplus"])
def test_a_fresh_field_without_the_ball_as_its_bias_still_starts_as_the_ball(activation: str) -> None:
    field = _field(activation, 0.0)
    radii = torch.linspace(0.0, 0.7, 15)
    x = _axis(radii)
    with torch.no_grad():
        before = field.density(x)
    error = field.fit_start()
    with torch.no_grad():
        after = field.density(x)
    ball = F.softplus(magic3d_blob(radii, SMALL.blob_density, SMALL.blob_radius))
    # Unfitted, the density is the wall's flat ~10 out to 0.7; fitted, it follows the ball (10 at the centre,
    # 0.69 at its radius 0.5, 0.13 at 0.6).
    assert float(before[-1]) > 5.0
    assert error < 0.2
    log_err = (after.clamp(min=1e-6).log() - ball.log()).abs()
    assert float(log_err.max()) < 0.8, log_err
    # Where the surface lies (the density crossing 1): within 0.03 of the ball's.
    fine = torch.linspace(0.3, 0.6, 301)
    with torch.no_grad():
        crossing = fine[int((field.density(_axis(fine)) < 1.0).nonzero()[0])]
    assert float(crossing) == pytest.approx(0.485, abs=0.03)


def test_keeping_the_whole_ball_is_magic3ds_density_and_fits_nothing() -> None:
    torch.manual_seed(0)
    plain = RadianceField(dataclasses.replace(SMALL, density_activation="exp"))
    kept = _field("exp", 1.0)
    x = _axis(torch.linspace(0.0, 0.9, 10))
    state = {k: v.clone() for k, v in kept.state_dict().items()}
    assert kept.fit_start() == 0.0
    assert all(torch.equal(v, kept.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(kept.density(x), plain.density(x))


def test_make_geometry_fits_the_start_deterministically_and_the_setting_is_validated() -> None:
    cfg = GenerationConfig(prompt="a red cube", blob_bias=0.5)
    fields = []
    for _ in range(2):
        torch.manual_seed(3)
        fields.append(make_geometry(cfg, torch.device("cpu")))
    a, b = fields
    assert isinstance(a, RadianceField) and a.cfg.blob_bias == 0.5
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    x = _axis(torch.tensor([0.0, 0.45, 0.55, 0.7]))
    with torch.no_grad():
        sigma = a.density(x)
    assert float(sigma[0]) > 5.0 and float(sigma[1]) > 1.0 and float(sigma[2]) < 1.0 and float(sigma[3]) < 0.1
    # The share travels with the field (a Refine or a reloaded field.pt keeps it).
    assert RadianceField.from_spec(a.spec()).cfg.blob_bias == 0.5
    with pytest.raises(InvalidConfig, match="blob_bias"):
        GenerationConfig(prompt="a red cube", blob_bias=1.5).validate()
    with pytest.raises(ValueError, match="blob_bias"):
        RadianceField(dataclasses.replace(SMALL, blob_bias=-0.1))
