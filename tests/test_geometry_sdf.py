"""The SDF geometry (VolSDF): its start, its density law, its eikonal term, its schedule and checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from backend.config import GenerationConfig
from backend.engine.geometry import build_geometry, make_geometry
from backend.engine.geometry.sdf import SDFConfig, SDFField, laplace_cdf

TINY = dataclasses.replace(
    SDFConfig.small(), n_levels=6, log2_hashmap_size=12, finest_resolution=128, hidden_dim=16
)


def field(**kw: object) -> SDFField:
    torch.manual_seed(0)
    return SDFField(dataclasses.replace(TINY, **kw))


def test_it_starts_as_the_sphere_exactly() -> None:
    f = field(sphere_radius=0.4)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.4, 0.0, 0.0], [0.0, 0.7, 0.0]])
    torch.testing.assert_close(f.sdf(x), torch.tensor([-0.4, 0.0, 0.3]))
    normals = f.normals(torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.0, -0.5]]))
    # forward differences (the CPU stencil): O(eps) off the exact normal
    torch.testing.assert_close(normals, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]), atol=0.03, rtol=0)


def test_density_is_volsdf_laplace_law() -> None:
    f = field(beta_start=0.05, beta_end=0.05)
    beta = 0.05
    d = torch.tensor([-0.2, -0.01, 0.0, 0.01, 0.1])
    x = torch.stack([0.5 + d, torch.zeros(5), torch.zeros(5)], dim=-1)  # on the x axis: sdf = |x| - 0.5
    expected = torch.where(d <= 0, 1 - 0.5 * torch.exp(d / beta), 0.5 * torch.exp(-d / beta)) / beta
    torch.testing.assert_close(f.density(x), expected)
    assert f.surface_level() == pytest.approx(0.5 / beta)
    # The tail is cut beyond `cutoff` beta outside (and outside the bound box): exactly 0.
    far = torch.tensor([[0.5 + 7 * beta, 0.0, 0.0], [1.2, 0.0, 0.0]])
    assert torch.equal(f.density(far), torch.zeros(2))
    # Psi_beta does not overflow for large arguments on either side.
    assert torch.isfinite(laplace_cdf(torch.tensor([-1e4, 1e4]), torch.tensor(1e-3))).all()


def test_eikonal_term_is_zero_for_a_distance_and_penalizes_a_scaled_one() -> None:
    f = field()
    g = torch.Generator().manual_seed(0)
    assert f.regularization(g)["eikonal"] < 1e-3  # |x| - r has |grad| = 1 (forward differences: ~1e-4)
    scaled = field()  # d = 1.5 (|x| - r): |grad d| = 1.5
    original = scaled.sdf

    def stretched(x: torch.Tensor) -> torch.Tensor:
        return 1.5 * original(x)

    scaled.sdf = stretched  # type: ignore[method-assign]
    assert float(scaled.regularization(torch.Generator().manual_seed(0))["eikonal"]) == pytest.approx(
        0.25, rel=0.05
    )


def test_the_eikonal_term_reaches_the_parameters() -> None:
    f = field()
    with torch.no_grad():
        f.sdf_mlp[-1].weight.normal_(0, 0.1)
    f.regularization(torch.Generator().manual_seed(0))["eikonal"].backward()
    assert f.encoding.table.grad is not None and f.encoding.table.grad.abs().sum() > 0


def test_beta_goes_from_start_to_end_over_the_run_and_is_saved() -> None:
    f = field(beta_start=0.1, beta_end=0.025)
    f.on_step(0, 101)
    assert float(f.beta) == pytest.approx(0.1)
    f.on_step(50, 101)
    assert float(f.beta) == pytest.approx(0.05)  # geometric: the middle is sqrt(0.1 * 0.025)
    f.on_step(100, 101)
    assert float(f.beta) == pytest.approx(0.025)
    again = build_geometry(f.spec())
    again.load_state_dict(f.state_dict())
    assert isinstance(again, SDFField) and float(again.beta) == pytest.approx(0.025)


def test_the_config_chooses_the_geometry() -> None:
    cpu = torch.device("cpu")
    assert make_geometry(GenerationConfig(prompt="x"), cpu).kind == "nerf"
    sdf = make_geometry(GenerationConfig(prompt="x", geometry="sdf", sdf_beta=(0.08, 0.02)), cpu)
    assert isinstance(sdf, SDFField) and (sdf.cfg.beta_start, sdf.cfg.beta_end) == (0.08, 0.02)


def test_coarse_to_fine_levels_fade_in_and_are_off_by_default() -> None:
    from backend.engine.geometry.progressive import ProgressiveLevels

    levels = ProgressiveLevels(n_levels=4, n_features=2, start=2, ramp=0.5)
    assert levels.weights.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    levels.update(25, 101)  # halfway through the ramp (50 steps): 3 of 4 levels
    assert levels.weights.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    levels.update(60, 101)
    assert levels.all_active
    h = torch.randn(5, 8)
    levels.update(0, 101)
    assert torch.equal(levels(h)[:, 4:], torch.zeros(5, 4)) and torch.equal(levels(h)[:, :4], h[:, :4])
    off = ProgressiveLevels(n_levels=4, n_features=2, start=0)
    assert off.all_active and off(h) is h  # exactly the features: runs without it are unchanged


def test_geometries_take_the_coarse_to_fine_setting() -> None:
    cpu = torch.device("cpu")
    for kind in ("nerf", "sdf"):
        geometry = make_geometry(GenerationConfig(prompt="x", geometry=kind, grid_levels_start=4), cpu)
        geometry.on_step(0, 100)
        features = geometry.density_and_features(torch.zeros(3, 3))[1]
        assert torch.count_nonzero(features[:, 8:]) == 0 and torch.count_nonzero(features[:, :8]) > 0
