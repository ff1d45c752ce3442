"""Cameras, the radiance field, backgrounds and the renderers (small grids, 32 px renders)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from backend.config import CameraConfig, GenerationConfig
from backend.engine.background import LearnedBackground, make_background
from backend.engine.cameras import (
    camera_rays,
    orbit_camera,
    sample_cameras,
    sequence_offset,
    stratified_units,
)
from backend.engine.geometry.nerf import FieldConfig, RadianceField
from backend.engine.rendering import (
    DenseRenderer,
    make_renderer,
    nerfacc_available,
    sample_light,
    sample_shading,
)
from backend.engine.rendering.compositing import composite, render_weights

TINY = FieldConfig(n_levels=8, log2_hashmap_size=14, base_resolution=16, finest_resolution=256, hidden_dim=32)
WHITE = torch.ones(3)


def make_field(seed: int = 0, device: str = "cpu") -> RadianceField:
    torch.manual_seed(seed)
    return RadianceField(TINY, device=device)


def front_rays(size: int = 32, distance: float = 2.0, fov: float = 45.0, device: str = "cpu"):
    c2w = orbit_camera(0.0, 0.0, distance)[None].to(device)
    return camera_rays(c2w, torch.tensor([fov], device=device), size)


# ---- cameras --------------------------------------------------------------------------------------------


def test_azimuth_zero_camera_stands_on_minus_y_looking_at_plus_y() -> None:
    c2w = orbit_camera(0.0, 0.0, 2.0)
    torch.testing.assert_close(c2w[:3, 3], torch.tensor([0.0, -2.0, 0.0]))
    torch.testing.assert_close(-c2w[:3, 2], torch.tensor([0.0, 1.0, 0.0]))  # looks along its -Z
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([1.0, 0.0, 0.0]))  # right = +X (Blender front view)
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]))  # up = +Z


def test_orbit_positions_and_rotation() -> None:
    torch.testing.assert_close(
        orbit_camera(0.0, 90.0, 3.0)[:3, 3], torch.tensor([3.0, 0.0, 0.0]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        orbit_camera(0.0, 180.0, 1.0)[:3, 3], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0
    )
    c2w = orbit_camera(
        torch.tensor([30.0, -20.0, 80.0]), torch.tensor([10.0, 200.0, -45.0]), torch.tensor([2.0] * 3)
    )
    assert c2w.shape == (3, 4, 4)
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(3))
    # Every camera looks at the origin and stands above the equator for positive elevation.
    looking = -c2w[:, :3, 2]
    torch.testing.assert_close(looking, -torch.nn.functional.normalize(c2w[:, :3, 3], dim=-1))
    assert c2w[0, 2, 3] > 0 and c2w[1, 2, 3] < 0


def test_centre_ray_hits_origin_and_top_left_ray_points_up_left() -> None:
    rays_o, rays_d = front_rays(size=33)
    assert rays_o.shape == rays_d.shape == (1, 33, 33, 3)
    torch.testing.assert_close(rays_d.norm(dim=-1), torch.ones(1, 33, 33))
    torch.testing.assert_close(rays_o[0, 5, 7], torch.tensor([0.0, -2.0, 0.0]))
    torch.testing.assert_close(rays_d[0, 16, 16], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    top_left = rays_d[0, 0, 0]
    assert top_left[0] < 0 and top_left[2] > 0  # left is -X and up is +Z seen from the front
    # The vertical field of view (45 degrees) spans the outer edges of the top and bottom pixel rows.
    top_mid = rays_d[0, 0, 16]
    expected = math.degrees(math.atan(32 / 33 * math.tan(math.radians(22.5))))
    assert math.degrees(math.atan2(top_mid[2], top_mid[1])) == pytest.approx(expected, abs=1e-3)


def test_sample_cameras_ranges_views_and_determinism() -> None:
    cam = CameraConfig(
        elevation_deg=(10.0, 20.0), azimuth_deg=(-30.0, 30.0), distance=(1.5, 2.5), front_azimuth_deg=90.0
    )
    batch = sample_cameras(cam, 6, 16, torch.Generator().manual_seed(0), "cpu")
    assert batch.rays_o.shape == batch.rays_d.shape == (6, 16, 16, 3)
    assert batch.c2w.shape == (6, 4, 4)
    assert ((batch.elevation_deg >= 10) & (batch.elevation_deg <= 20)).all()
    assert ((batch.azimuth_deg >= 60) & (batch.azimuth_deg <= 120)).all()  # relative to the front at 90
    assert ((batch.distance >= 1.5) & (batch.distance <= 2.5)).all()
    assert batch.views == ["front"] * 6
    torch.testing.assert_close(batch.positions.norm(dim=-1), batch.distance)
    again = sample_cameras(cam, 6, 16, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(batch.c2w, again.c2w) and torch.equal(batch.rays_d, again.rays_d)
    back = sample_cameras(
        CameraConfig(azimuth_deg=(180.0, 180.0), elevation_deg=(0.0, 0.0)), 1, 8, torch.Generator(), "cpu"
    )
    assert back.views == ["back"]


def test_stratified_elevations_cover_the_range_evenly_and_leave_the_other_draws_alone() -> None:
    cam = CameraConfig(elevation_deg=(-10.0, 45.0))
    offset = sequence_offset(3)
    assert offset == sequence_offset(3) and offset != sequence_offset(4)  # from the seed alone
    units = torch.cat([stratified_units(i * 2, 2, offset) for i in range(10)])
    assert torch.equal(units, stratified_units(0, 20, offset))  # batches continue one sequence
    # Any 10 consecutive points leave no gap wider than 0.2 of the range (the golden ratio's three gaps).
    for first in (0, 7, 113):
        pts = torch.sort(stratified_units(first, 10, offset)).values
        gaps = torch.cat([pts.diff(), (pts[:1] + 1 - pts[-1:])])
        assert float(gaps.max()) < 0.2
    drawn = sample_cameras(cam, 20, 4, torch.Generator().manual_seed(0), "cpu")
    placed = sample_cameras(cam, 20, 4, torch.Generator().manual_seed(0), "cpu", units)
    torch.testing.assert_close(placed.elevation_deg.double(), -10.0 + 55.0 * units, atol=1e-4, rtol=0)
    assert torch.equal(placed.azimuth_deg, drawn.azimuth_deg) and torch.equal(placed.distance, drawn.distance)
    assert torch.equal(placed.fov_deg, drawn.fov_deg)


# ---- field ----------------------------------------------------------------------------------------------


def test_blob_makes_centre_dense_and_corners_empty() -> None:
    field = make_field()
    with torch.no_grad():
        sigma = field.density(
            torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.1, 0.05], [0.95, 0.95, 0.95], [1.5, 0.0, 0.0]])
        )
    assert sigma[0] > 8 and sigma[1] > 6
    assert sigma[2] < 1e-3
    assert sigma[3] == 0  # outside the bound box


def test_exp_density_activation_scales_the_same_ball_by_a_factor() -> None:
    torch.manual_seed(0)
    small = FieldConfig.small()
    soft = RadianceField(small)
    torch.manual_seed(0)
    exp = RadianceField(dataclasses.replace(small, density_activation="exp"))
    x = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.1, -0.2], [0.9, 0.0, 0.0], [1.5, 0.0, 0.0]])
    with torch.no_grad():
        raw = exp.density_mlp(exp._encode(x)).squeeze(-1)
        ball = torch.nn.functional.softplus(exp.density_bias(x))
        assert torch.allclose(exp.density(x)[:3], ball[:3] * raw[:3].exp())
        assert float(exp.density(x)[3]) == 0.0  # outside the bound box
        # A fresh field is about the same ball either way (raw starts near 0: the heads' biases).
        assert torch.allclose(exp.density(x), soft.density(x), rtol=0.15, atol=1e-3)
        # A change of raw by +1 multiplies the density by e wherever it is.
        exp.density_mlp[-1].bias += 1.0
        assert torch.allclose(exp.density(x)[:3], ball[:3] * (raw[:3] + 1).exp(), rtol=1e-5)
    again = RadianceField.from_spec(exp.spec())
    assert again.cfg.density_activation == "exp"
    with pytest.raises(ValueError, match="density activation"):
        RadianceField(dataclasses.replace(small, density_activation="relu"))


def test_forward_albedo_and_normals() -> None:
    field = make_field()
    x = torch.tensor([[0.3, 0.0, 0.0], [0.0, -0.3, 0.0], [0.0, 0.0, 0.4]])
    sigma, albedo = field(x)
    assert sigma.shape == (3,) and albedo.shape == (3, 3)
    assert ((albedo >= 0) & (albedo <= 1)).all()
    torch.testing.assert_close(albedo, field.albedo(x))
    normals = field.normals(x)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(3))
    # The blob's normals point outward, along the position.
    assert (normals * torch.nn.functional.normalize(x, dim=-1)).sum(-1).min() > 0.95


def test_forward_difference_normals_agree_with_central_ones() -> None:
    field = make_field()
    x = torch.tensor([[0.3, 0.0, 0.0], [0.0, -0.3, 0.0], [0.0, 0.0, 0.4], [0.2, 0.2, -0.2]])
    central = field.normals(x)
    field.cfg = FieldConfig(**{**vars(TINY), "normal_stencil": "forward"})
    forward = field.normals(x)
    torch.testing.assert_close(field.normals(x, field.density(x)), forward)  # given sigma(x): same result
    torch.testing.assert_close(forward.norm(dim=-1), torch.ones(4))
    assert (forward * central).sum(-1).min() > 0.99  # within ~8 degrees on the blob
    field.cfg = FieldConfig(**{**vars(TINY), "normal_stencil": "sideways"})
    with pytest.raises(ValueError, match="normal stencil"):
        field.normals(x)


def test_param_groups_use_the_configured_learning_rates() -> None:
    field = make_field()
    cfg = GenerationConfig(prompt="a cube", lr_grid=0.02, lr_mlp=0.003)
    groups = {g["name"]: g for g in field.param_groups(cfg)}
    assert groups["grid"]["lr"] == 0.02 and groups["mlp"]["lr"] == 0.003
    n_grouped = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n_grouped == sum(p.numel() for p in field.parameters())


# ---- backgrounds, light, shading choice -----------------------------------------------------------------


def test_background_colors() -> None:
    rays_d = torch.nn.functional.normalize(
        torch.randn(2, 4, 4, 3, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    white = make_background("white")(rays_d)
    assert torch.equal(white, torch.ones(2, 4, 4, 3))
    random = make_background("random")(rays_d, torch.Generator().manual_seed(5))
    assert random.shape == (2, 4, 4, 3)
    assert torch.equal(random[0], random[0, :1, :1].expand(4, 4, 3))  # one solid colour per image
    assert not torch.equal(random[0, 0, 0], random[1, 0, 0])
    assert torch.equal(random, make_background("random")(rays_d, torch.Generator().manual_seed(5)))
    torch.manual_seed(0)
    learned = make_background("learned")(rays_d)
    assert learned.shape == (2, 4, 4, 3) and ((learned > 0) & (learned < 1)).all()
    assert make_background("learned").param_groups(GenerationConfig(prompt="x"))[0]["params"]
    assert make_background("white").param_groups(GenerationConfig(prompt="x")) == []
    with pytest.raises(ValueError):
        make_background("checkerboard")


def test_light_is_unit_and_near_the_camera() -> None:
    batch = sample_cameras(CameraConfig(), 64, 4, torch.Generator().manual_seed(0), "cpu")
    light = sample_light(batch, torch.Generator().manual_seed(1))
    torch.testing.assert_close(light.norm(dim=-1), torch.ones(64))
    cos = (light * torch.nn.functional.normalize(batch.positions, dim=-1)).sum(-1)
    assert cos.mean() > 0.7


def test_shading_warmup_then_mix() -> None:
    cfg = GenerationConfig(prompt="a cube", shading_warmup_steps=10, shading_probs=(0.5, 0.3, 0.2))
    g = torch.Generator().manual_seed(0)
    assert {sample_shading(step, cfg, g) for step in range(10)} == {"albedo"}
    draws = [sample_shading(100, cfg, g) for _ in range(2000)]
    for name, p in zip(("albedo", "lambertian", "textureless"), cfg.shading_probs, strict=True):
        assert draws.count(name) / len(draws) == pytest.approx(p, abs=0.05)


# ---- dense renderer -------------------------------------------------------------------------------------


def test_fresh_field_renders_opaque_centre_over_background() -> None:
    field = make_field()
    rays_o, rays_d = front_rays(size=32)
    with torch.no_grad():
        out = DenseRenderer(samples_per_ray=48).render(field, rays_o, rays_d, "albedo", None, WHITE, None)
    assert out.rgb.shape == (1, 32, 32, 3) and out.opacity.shape == (1, 32, 32, 1)
    assert out.depth.shape == (1, 32, 32, 1) and out.normal.shape == (1, 32, 32, 3)
    centre = out.opacity[0, 15:17, 15:17]
    assert centre.min() > 0.95
    # The visible surface of the blob is about 0.5 in front of the origin.
    assert 1.3 < out.depth[0, 16, 16, 0] < 1.8
    for corner in (out.opacity[0, 0, 0], out.opacity[0, -1, -1], out.opacity[0, 0, -1]):
        assert corner < 0.02
    torch.testing.assert_close(out.rgb[0, 0, 0], torch.ones(3), atol=0.02, rtol=0)
    # The centre shows the albedo (sigmoid of a fresh MLP: mid grey), not the white background.
    assert (out.rgb[0, 16, 16] < 0.8).all()


def test_textureless_shading_is_lit_from_the_light() -> None:
    field = make_field()
    rays_o, rays_d = front_rays(size=16)
    renderer = DenseRenderer(samples_per_ray=32)
    with torch.no_grad():
        lit = renderer.render(
            field, rays_o, rays_d, "textureless", torch.tensor([[0.0, -1.0, 0.0]]), WHITE * 0
        )
        dark = renderer.render(
            field, rays_o, rays_d, "textureless", torch.tensor([[0.0, 1.0, 0.0]]), WHITE * 0
        )
    # Light from the camera side brightens the centre; light from behind leaves only the ambient term.
    assert lit.rgb[0, 8, 8].mean() > 0.8
    assert dark.rgb[0, 8, 8].mean() < 0.2
    # The visible normals in the middle of the image face the camera (-Y).
    centre_normal = torch.nn.functional.normalize(lit.normal[0, 7:9, 7:9].sum((0, 1)), dim=0)
    assert centre_normal[1] < -0.95


def test_rays_that_miss_the_box_show_the_background() -> None:
    field = make_field()
    c2w = orbit_camera(0.0, 0.0, 6.0)[None]
    rays_o, rays_d = camera_rays(c2w, torch.tensor([60.0]), 16)
    bg = torch.tensor([0.2, 0.4, 0.6])
    out = DenseRenderer(samples_per_ray=16).render(field, rays_o, rays_d, "albedo", None, bg, None)
    torch.testing.assert_close(out.rgb[0, 0, 0], bg)
    assert out.opacity[0, 0, 0] == 0 and out.opacity[0, 8, 8] > 0.8


def test_orientation_loss_and_gradients_reach_every_part() -> None:
    field = make_field()
    background = LearnedBackground()
    batch = sample_cameras(CameraConfig(), 2, 24, torch.Generator().manual_seed(0), "cpu")
    g = torch.Generator().manual_seed(1)
    out = DenseRenderer(samples_per_ray=32).render(
        field, batch.rays_o, batch.rays_d, "lambertian", sample_light(batch, g), background(batch.rays_d), g
    )
    assert out.orientation_loss.dim() == 0 and torch.isfinite(out.orientation_loss)
    assert out.orientation_loss.requires_grad
    (out.rgb.mean() + 1e-2 * out.orientation_loss).backward()
    assert field.encoding.table.grad is not None and field.encoding.table.grad.abs().sum() > 0
    for mlp in (field.density_mlp, field.albedo_mlp, background.mlp):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mlp.parameters())
        assert sum(p.grad.abs().sum() for p in mlp.parameters()) > 0


def test_orientation_loss_alone_moves_the_density() -> None:
    field = make_field()
    rays_o, rays_d = front_rays(size=16)
    out = DenseRenderer(samples_per_ray=32).render(field, rays_o, rays_d, "albedo", None, WHITE, None)
    out.orientation_loss.backward()
    assert field.encoding.table.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in field.density_mlp.parameters()) > 0


def test_renders_are_deterministic_for_a_seed() -> None:
    field = make_field()
    batch = sample_cameras(CameraConfig(), 1, 16, torch.Generator().manual_seed(0), "cpu")
    renderer = DenseRenderer(samples_per_ray=24)

    def render(seed: int) -> torch.Tensor:
        with torch.no_grad():
            return renderer.render(
                field,
                batch.rays_o,
                batch.rays_d,
                "lambertian",
                None,
                None,
                torch.Generator().manual_seed(seed),
            ).rgb

    first = render(7)
    assert torch.equal(first, render(7))
    assert not torch.equal(first, render(8))  # the jitter comes from the generator


def test_chunked_render_without_grad_matches_single_pass() -> None:
    field = make_field()
    rays_o, rays_d = front_rays(size=16)
    whole = DenseRenderer(samples_per_ray=16)
    chunked = DenseRenderer(samples_per_ray=16, chunk_rays=50)
    out = whole.render(field, rays_o, rays_d, "lambertian", None, WHITE, None)
    with torch.no_grad():
        out_chunked = chunked.render(field, rays_o, rays_d, "lambertian", None, WHITE, None)
    torch.testing.assert_close(out_chunked.rgb, out.rgb.detach())
    torch.testing.assert_close(out_chunked.orientation_loss, out.orientation_loss.detach())


def test_make_renderer_on_cpu_is_dense() -> None:
    renderer = make_renderer(40, "cpu")
    assert isinstance(renderer, DenseRenderer) and renderer.samples_per_ray == 40
    assert renderer.grid is not None and renderer.grid.resolution > 0  # empty-space skipping, as nerfacc
    renderer.update(0)  # no field rendered yet: a no-op
    assert renderer.grid.cells is None
    field = make_field()
    renderer.update(0, field)
    assert renderer.grid.cells is not None and renderer.grid.cells.shape == (renderer.grid.resolution,) * 3


# ---- GPU ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_dense_renderer_on_cuda_matches_cpu() -> None:
    field = make_field()
    rays_o, rays_d = front_rays(size=24)
    renderer = DenseRenderer(samples_per_ray=32)
    with torch.no_grad():
        cpu = renderer.render(field, rays_o, rays_d, "lambertian", None, WHITE, None)
        field_cuda = field.to("cuda")
        cuda = renderer.render(field_cuda, rays_o.cuda(), rays_d.cuda(), "lambertian", None, WHITE, None)
    torch.testing.assert_close(cuda.rgb.cpu(), cpu.rgb, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_nerfacc_and_dense_renderers_agree() -> None:
    if not nerfacc_available():
        pytest.skip("nerfacc's CUDA kernels are not available")
    from backend.engine.rendering import NerfaccRenderer

    field = make_field(device="cuda")
    rays_o, rays_d = front_rays(size=32, device="cuda")
    dense = DenseRenderer(samples_per_ray=512, visible_weight_threshold=1e-5)
    # A low occupancy threshold keeps the blob's faint rim, which the dense renderer integrates too.
    packed = NerfaccRenderer(bound=1.0, device="cuda", occ_threshold=1e-4, visible_weight_threshold=1e-5)
    light = torch.tensor([[0.3, -1.0, 0.4]], device="cuda")
    with torch.no_grad():
        for shading in ("albedo", "lambertian"):
            a = dense.render(field, rays_o, rays_d, shading, light, WHITE, None)
            b = packed.render(field, rays_o, rays_d, shading, light, WHITE, None)
            assert (a.rgb - b.rgb).abs().mean() < 0.01
            assert (a.rgb - b.rgb).abs().max() < 0.05
            assert (a.opacity - b.opacity).abs().max() < 0.05
            assert (a.depth - b.depth)[a.opacity > 0.5].abs().max() < 0.05
            assert abs(a.orientation_loss.item() - b.orientation_loss.item()) < 0.01


@pytest.mark.gpu
def test_nerfacc_renderer_trains() -> None:
    if not nerfacc_available():
        pytest.skip("nerfacc's CUDA kernels are not available")
    from backend.engine.rendering import NerfaccRenderer

    field = make_field(device="cuda")
    background = LearnedBackground().cuda()
    renderer = make_renderer(32, "cuda")
    assert isinstance(renderer, NerfaccRenderer)
    batch = sample_cameras(CameraConfig(), 2, 32, torch.Generator().manual_seed(0), "cuda")
    for step in range(3):
        renderer.update(step, field)
        out = renderer.render(
            field,
            batch.rays_o,
            batch.rays_d,
            "lambertian",
            None,
            background(batch.rays_d),
            torch.Generator().manual_seed(step),
        )
        (out.rgb.mean() + out.orientation_loss).backward()
    assert renderer.estimator.binaries.any()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.encoding.parameters())
    assert torch.isfinite(out.rgb).all() and out.opacity[0, 16, 16] > 0.9


def test_an_empty_field_gets_no_occupancy_skipping() -> None:
    field = make_field()
    field.cfg = FieldConfig(**{**vars(TINY), "blob_density": -10.0, "blob_radius": 1e6})  # sigma ~5e-5
    renderer = DenseRenderer(samples_per_ray=32, occupancy_resolution=8)
    renderer.update(0, field)
    assert renderer.grid is not None and renderer.grid.cells is not None and renderer.grid.cells.all()
    rays_o, rays_d = front_rays(size=8)
    out = renderer.render(field, rays_o, rays_d, "albedo", None, WHITE, torch.Generator().manual_seed(0))
    out.opacity.sum().backward()
    assert field.encoding.table.grad is not None and field.encoding.table.grad.abs().sum() > 0


def test_occupancy_grid_skips_empty_space_without_changing_the_image() -> None:
    field = make_field()
    rays_o, rays_d = front_rays(size=24)
    plain = DenseRenderer(samples_per_ray=32)
    skipping = DenseRenderer(samples_per_ray=32, occupancy_resolution=16)
    skipping.update(0, field)
    cells = skipping.grid.cells if skipping.grid is not None else None
    assert cells is not None
    assert cells[8, 8, 8] and not cells[0, 0, 0]
    assert cells.float().mean() < 0.5
    with torch.no_grad():
        a = plain.render(field, rays_o, rays_d, "lambertian", None, WHITE, None)
        b = skipping.render(field, rays_o, rays_d, "lambertian", None, WHITE, None)
    torch.testing.assert_close(b.rgb, a.rgb, atol=0.01, rtol=0)
    torch.testing.assert_close(b.opacity, a.opacity, atol=0.01, rtol=0)
    out = skipping.render(field, rays_o, rays_d, "albedo", None, WHITE, torch.Generator().manual_seed(0))
    out.rgb.mean().backward()
    assert field.encoding.table.grad.abs().sum() > 0


# ---- compositing ----------------------------------------------------------------------------------------


def test_packed_and_padded_compositing_agree() -> None:
    """The nerfacc path composites packed samples with the same function as the dense path's padded ones."""
    g = torch.Generator().manual_seed(3)
    r, s = 5, 7
    tau = torch.rand(r, s, generator=g) * 0.8
    colours, normals = torch.rand(r, s, 3, generator=g), torch.randn(r, s, 3, generator=g)
    t_mid = torch.linspace(1.0, 2.0, s).expand(r, s)
    dirs = torch.nn.functional.normalize(torch.randn(r, 3, generator=g), dim=-1)
    padded_w = render_weights(tau)
    padded = composite(padded_w, colours, normals, t_mid, dirs)
    # Pack with some rays holding fewer samples (trailing samples dropped) and one ray empty.
    keep = torch.ones(r, s, dtype=torch.bool)
    keep[1, 4:] = False
    keep[3] = False
    ray_indices = torch.arange(r).unsqueeze(1).expand(r, s)[keep]
    packed_w = render_weights(tau[keep], ray_indices)
    torch.testing.assert_close(packed_w, padded_w[keep])  # a dropped tail changes no earlier weight
    packed = composite(packed_w, colours[keep], normals[keep], t_mid[keep], dirs[ray_indices], ray_indices, r)
    w = padded_w * keep
    expected = composite(w, colours, normals, t_mid, dirs)
    for name in ("rgb", "opacity", "depth", "normal", "orientation_sum", "depth_variance_sum"):
        torch.testing.assert_close(getattr(packed, name), getattr(expected, name))
    assert packed.opacity[3] == 0 and padded.opacity[3] > 0
    # w_i = T_i (1 - exp(-tau_i)) by hand for one ray.
    t0 = tau[2]
    hand = torch.exp(-torch.cat([torch.zeros(1), t0.cumsum(0)[:-1]])) * (1 - torch.exp(-t0))
    torch.testing.assert_close(padded_w[2], hand)


def test_depth_variance_is_zero_at_one_surface_and_the_spread_of_fog() -> None:
    """sum_i w_i (t_i - depth)^2 / opacity: 0 for a ray whose weight sits in one sample, the variance of
    the sample distances for weight spread evenly; differentiable, so descending it gathers fog."""
    t_mid = torch.tensor([[1.0, 1.5, 2.0, 2.5]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]])
    zeros = torch.zeros(1, 4, 3)
    one = composite(torch.tensor([[0.0, 0.9, 0.0, 0.0]]), zeros, zeros, t_mid, dirs)
    assert float(one.depth_variance_sum) == pytest.approx(0.0, abs=1e-9)
    even = composite(torch.full((1, 4), 0.2), zeros, zeros, t_mid, dirs)
    assert float(even.depth_variance_sum) == pytest.approx(float(t_mid.var(unbiased=False)), rel=1e-5)
    # Descending it through the optical depths concentrates a uniform fog.
    log_tau = torch.full((1, 4), 0.3).log().requires_grad_()
    optimizer = torch.optim.Adam([log_tau], lr=0.1)
    start = float(composite(render_weights(log_tau.exp()), zeros, zeros, t_mid, dirs).depth_variance_sum)
    for _ in range(50):
        optimizer.zero_grad()
        composite(render_weights(log_tau.exp()), zeros, zeros, t_mid, dirs).depth_variance_sum.backward()
        optimizer.step()
    end = float(composite(render_weights(log_tau.exp()), zeros, zeros, t_mid, dirs).depth_variance_sum)
    assert end < 0.3 * start
