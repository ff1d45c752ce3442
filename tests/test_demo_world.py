"""The demo world: exact occupancy, renders that agree with it, engine-style captions, determinism."""

from __future__ import annotations

import pytest
import torch

from backend import demo_world as w
from backend.config import CameraConfig
from backend.engine.cameras import camera_rays, orbit_camera, sample_cameras
from backend.engine.views import VIEWS, view_name, view_prompt


@pytest.fixture(autouse=True)
def _one_thread():
    # Shared CPU: several small tensors ops run faster without OpenMP barrier stalls.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_world_has_enough_shapes_colours_and_a_front():
    assert len(w.SHAPES) >= 6 and len(w.COLOURS) >= 6
    assert {"sphere", "cube", "cylinder", "cone", "torus"} <= set(w.SHAPES)
    assert any(w.DemoObject(s, "red").has_front for s in w.SHAPES)
    assert len(w.all_objects()) == len(w.SHAPES) * len(w.COLOURS)


@pytest.mark.parametrize("shape", w.SHAPES)
def test_occupancy_is_bounded_and_about_half_unit_radius(shape):
    obj = w.DemoObject(shape, "red")
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(200_000, 3, generator=g) * 2 - 1
    inside = w.occupancy(obj, pts)
    assert inside.dtype == torch.bool and inside.shape == (200_000,)
    assert 0.01 < inside.float().mean() < 0.2
    radius = pts[inside].norm(dim=1).max()
    assert 0.45 < radius < w.BOUNDING_RADIUS


def test_occupancy_known_points():
    origin = torch.zeros(1, 3)
    for shape in ("sphere", "cube", "cylinder", "cone", "house"):
        assert w.occupancy(w.DemoObject(shape, "red"), origin).item()
    torus = w.DemoObject("torus", "red")
    assert not w.occupancy(torus, origin).item()  # the hole
    assert w.occupancy(torus, torch.tensor([[w.TORUS_MAJOR, 0.0, 0.0]])).item()
    cone = w.DemoObject("cone", "red")
    # Wide at the bottom, pointed at the top (Z up).
    assert w.occupancy(cone, torch.tensor([[0.4, 0.0, -0.44]])).item()
    assert not w.occupancy(cone, torch.tensor([[0.4, 0.0, 0.4]])).item()


@pytest.mark.parametrize("shape", w.SHAPES)
def test_render_silhouette_matches_projected_occupancy(shape):
    obj = w.DemoObject(shape, "blue")
    g = torch.Generator().manual_seed(1)
    cams = sample_cameras(CameraConfig(), 3, 32, g, "cpu")
    sil = w.render_silhouette(obj, cams.rays_o, cams.rays_d)
    proj = w.project_occupancy(obj, cams.rays_o, cams.rays_d, samples=384)
    iou = (sil & proj).sum() / (sil | proj).sum()
    assert sil.float().mean() > 0.05  # the object is in view
    assert iou > 0.95, f"{shape}: IoU {iou:.3f}"
    # The shaded render covers exactly the silhouette, on a white background.
    light = torch.nn.functional.normalize(cams.positions, dim=-1)
    rgb, cov = w.render(obj, cams.rays_o, cams.rays_d, light)
    assert torch.equal(cov > 0.5, sil)
    assert torch.all(rgb[~sil] == 1.0)
    assert rgb[sil].mean(0)[2] > rgb[sil].mean(0)[0]  # blue


def test_captions_follow_the_engine_views():
    obj = w.DemoObject("cube", "red")
    g = torch.Generator().manual_seed(2)
    batch = w.render_views(obj, 16, 16, g, CameraConfig(elevation_deg=(-10.0, 80.0)))
    assert batch.images.shape == (16, 16, 16, 3)
    for cap, view, el, az in zip(
        batch.captions, batch.views, batch.elevation_deg, batch.azimuth_deg, strict=True
    ):
        assert view == view_name(float(el), float(az))
        assert cap == view_prompt("a red cube", view)
    assert set(batch.views) <= set(VIEWS)


def test_dataset_is_deterministic_from_the_seed():
    objs = [w.DemoObject("torus", "green"), w.DemoObject("house", "orange")]
    a_img, a_cap, _ = w.make_dataset(12, size=16, seed=5, objects=objs, chunk=4)
    b_img, b_cap, _ = w.make_dataset(12, size=16, seed=5, objects=objs, chunk=4)
    c_img, _, _ = w.make_dataset(12, size=16, seed=6, objects=objs, chunk=4)
    assert torch.equal(a_img, b_img) and a_cap == b_cap
    assert not torch.equal(a_img, c_img)
    assert a_img.dtype == torch.uint8 and a_img.shape == (12, 16, 16, 3)
    assert {c.split(",")[0] for c in a_cap} == {objs[0].prompt, objs[1].prompt}


def test_house_door_is_on_the_front():
    house = w.DemoObject("house", "yellow")
    c2w = torch.stack([orbit_camera(10.0, 0.0, 2.0), orbit_camera(10.0, 180.0, 2.0)])
    rays_o, rays_d = camera_rays(c2w, torch.tensor([45.0, 45.0]), 48)
    light = torch.nn.functional.normalize(c2w[:, :3, 3], dim=-1)
    rgb, _ = w.render(house, rays_o, rays_d, light, ambient=0.5)
    dark = (rgb.amax(dim=-1) < 0.3).sum(dim=(1, 2))
    assert dark[0] > 15  # the door, seen from the front (azimuth 0, -Y)
    assert dark[1] == 0  # no door at the back


def test_parse_prompt():
    for obj in w.all_objects():
        assert w.parse_prompt(obj.prompt) == obj
        assert w.parse_prompt(w.caption(obj, "side")) == obj
    assert w.parse_prompt("A big BLUE ball") == w.DemoObject("sphere", "blue")
    assert w.parse_prompt("an orange donut, overhead view") == w.DemoObject("torus", "orange")
    with pytest.raises(ValueError):
        w.parse_prompt("a teapot")


def test_captions_use_the_right_article():
    assert w.DemoObject("cone", "orange").prompt == "an orange cone"
    assert w.caption(w.DemoObject("house", "red"), "back") == "a red house, back view"
