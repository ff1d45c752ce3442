"""The demo prior's scripts end to end at toy sizes: train a few steps, load the result through the engine's
loader, sample it and score it, and run the world benchmark and its ceiling on it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.config import CameraConfig
from backend.demo_world import DemoObject
from backend.engine.prior import load_prior

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"dreamsmith_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prior")
    train = load_script("train_demo_prior")
    argv = ["--steps", "3", "--dataset-size", "96", "--batch-size", "4", "--threads", "0"]
    assert train.main(argv + ["--out", str(root / "prior"), "--cache", str(root / "cache")]) == 0
    return root / "prior"


def test_training_writes_a_diffusers_prior_the_engine_loads(trained):
    index = json.loads((trained / "model_index.json").read_text())
    assert {"unet", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    log = json.loads((trained / "train_log.json").read_text())
    assert log["info"]["steps"] == 3 and len(log["curve"]) == 3
    assert all(row["loss"] > 0 for row in log["curve"])
    card = (trained / "README.md").read_text()
    assert "Final loss" in card and "min-SNR" in card
    prior = load_prior(str(trained), torch.device("cpu"))
    assert (
        not prior.is_latent
        and prior.input_size == 32
        and prior.recommended == {"t_max": 0.6, "guidance_scale": {"sds": 3.0}, "cpu_threads": 1.0}
    )
    # The tokenizer spells the world's captions, with the right article, in few tokens and none unknown.
    ids = prior.tokenizer("an orange torus, side view", add_special_tokens=False).input_ids
    assert prior.tokenizer.unk_token_id not in ids and len(ids) <= 12
    assert prior.tokenizer.decode(ids).replace(" ,", ",") == "an orange torus, side view"


def test_sample_prior_scores_its_samples(trained, tmp_path, capsys):
    sample = load_script("sample_prior")
    out = tmp_path / "samples"
    argv = ["--model", str(trained), "--prompts", "a red cube", "a teapot", "--views", "front"]
    assert sample.main(argv + ["--steps", "2", "--threads", "0", "--out", str(out)]) == 0
    result = json.loads((out / "samples.json").read_text())
    assert result["n_samples"] == 2 and (out / "grid.png").stat().st_size > 0
    # The classifier is near perfect on true renders; "a teapot" is drawn but not scored.
    assert result["classifier_accuracy_on_renders"]["colour"] > 0.95
    assert set(result["accuracy"]) == {"colour", "shape", "both"}
    assert "colour_ok" in result["samples"][0] and "colour_ok" not in result["samples"][1]
    assert "samples showing the asked colour" in capsys.readouterr().out


@pytest.mark.parametrize("supervision", ["prior", "truth"])
def test_bench_world_prints_the_summary_and_writes_json_and_contact_sheet(
    trained, tmp_path, capsys, supervision
):
    bench = load_script("bench_world")
    out = tmp_path / "world.json"
    argv = ["--model", str(trained), "--objects", "a red torus", "a blue house", "--seeds", "0"]
    argv += ["--steps", "3", "--eval-every", "3", "--set", "export.mesh_resolution=32", "--jobs", "1"]
    assert bench.main(argv + ["--supervision", supervision, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["supervision"] == supervision and len(result["runs"]) == 2
    assert result["settings"]["truth_background"] == "white"
    torus, house = result["runs"]
    for run in result["runs"]:
        assert 0.0 <= run["mesh_iou"] <= 1.0 and run["normal_deg"] >= 0 and run["chamfer"] >= 0
        assert isinstance(run["ok"], bool) and run["best_shape"] in (
            "sphere",
            "cube",
            "cylinder",
            "cone",
            "torus",
            "house",
        )
        assert run["curve"][-1]["step"] == 3 and run["gen_s"] > 0
    assert isinstance(torus["hole_open"], bool) and "door_contrast_back" in house
    summary = result["summary"]["tp-sds"]
    assert set(summary["per_shape"]) == {"torus", "house"} and 0.0 <= summary["accuracy"] <= 1.0
    sheet = Image.open(out.with_suffix(".png"))
    assert sheet.width >= 2 * 96 and sheet.height > 96
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "per shape" in printed and "per run" in printed


def test_bench_world_start_truth_distils_from_the_ceilings_field(trained, tmp_path, capsys):
    """--start truth: each run first makes the ceiling's field (the same fit, scored as start_iou), then
    distils from it; a blob-started run records no start."""
    bench = load_script("bench_world")
    argv = ["--model", str(trained), "--objects", "a red cube", "--seeds", "0", "--steps", "4"]
    argv += ["--eval-every", "4", "--set", "export.mesh_resolution=32", "--jobs", "1"]
    ceiling, started = tmp_path / "ceiling.json", tmp_path / "started.json"
    assert bench.main(argv + ["--supervision", "truth", "--out", str(ceiling)]) == 0
    assert bench.main(argv + ["--start", "truth", "--out", str(started)]) == 0
    (fit,) = json.loads(ceiling.read_text())["runs"]
    result = json.loads(started.read_text())
    (run,) = result["runs"]
    assert "start_iou" not in fit and result["settings"]["start"] == "truth"
    assert run["start_iou"] == pytest.approx(fit["curve"][-1]["iou"], abs=1e-9)
    assert result["summary"]["tp-sds"]["start_iou"] == pytest.approx(run["start_iou"])
    assert run["curve"][-1]["step"] == 4 and run["gen_s"] > 0
    assert "from the truth-fitted field" in capsys.readouterr().out


def test_fits_to_exact_renders_see_the_truth_background():
    bench = load_script("bench_world")
    argv = ["--objects", "a yellow cube", "--supervision", "truth", "--set", "background=learned"]
    args = bench.parse_args(argv)
    cfg = bench.run_config("a yellow cube", "tp-sds", 0, args)
    assert cfg.background == "learned" and bench.truth_config(cfg, args).background == "white"
    args = bench.parse_args([*argv, "--truth-background", "random"])
    assert bench.truth_config(cfg, args).background == "random"


def test_bench_world_summarizes_each_seed_apart(capsys):
    bench = load_script("bench_world")

    def record(shape: str, seed: int, ok: bool, iou: float) -> dict:
        return {"method": "tp-sds", "shape": shape, "seed": seed, "ok": ok, "mesh_iou": iou, "gen_s": 1.0}

    runs = [record("cube", 0, True, 0.8), record("cone", 0, True, 0.9), record("cube", 1, False, 0.6)]
    runs.append(record("cone", 1, True, 0.7))
    summary = bench.summarize(runs)["tp-sds"]
    assert summary["accuracy"] == 0.75
    assert summary["per_seed"]["0"]["accuracy"] == 1.0 and summary["per_seed"]["1"]["accuracy"] == 0.5
    assert summary["per_seed"]["1"]["mesh_iou"] == pytest.approx(0.65)
    bench.print_summary({"tp-sds": summary}, "x")
    assert "per seed: s0 100.0% IoU 0.850, s1 50.0% IoU 0.650" in capsys.readouterr().out


def test_bench_world_refuses_a_prompt_outside_the_world():
    bench = load_script("bench_world")
    with pytest.raises(ValueError, match="teapot"):
        bench.parse_args(["--objects", "a teapot"])


def test_ceiling_supervision_is_exact_on_the_true_object():
    """The ceiling's target is the world object drawn through the step's own rays, light and shading:
    rendering the true object's image pixel for pixel (0 loss for a field that equals it)."""
    from backend.demo_world import DemoObject, render
    from backend.engine.cameras import sample_cameras
    from backend.engine.optimize import RenderedBatch
    from backend.engine.rendering import RenderOutput
    from backend.evaluation.supervision import PhotometricTruth

    obj = DemoObject("cube", "green")
    cams = sample_cameras(CameraConfig(), 2, 24, torch.Generator().manual_seed(0), "cpu")
    light = torch.nn.functional.normalize(cams.positions, dim=-1)
    white = torch.ones(2, 24, 24, 3)
    zero = torch.zeros(2, 24, 24, 1)
    batch = RenderedBatch(
        cams,
        "lambertian",
        light,
        white,
        RenderOutput(white, zero, zero, white, torch.zeros(()), torch.zeros(())),
    )
    target = PhotometricTruth(obj, ambient=0.3).target(batch)
    expected, _ = render(obj, cams.rays_o, cams.rays_d, light, ambient=0.3)
    torch.testing.assert_close(target, expected, atol=1e-5, rtol=0)
    albedo = PhotometricTruth(obj).target(RenderedBatch(cams, "albedo", light, white, batch.out))
    colours = albedo.reshape(-1, 3)
    assert ((colours - torch.tensor(obj.rgb)).abs().sum(-1) < 1e-5).any()  # flat albedo where it hits


def test_surface_error_sees_pits_that_iou_misses():
    """A pitted sphere and a smooth one have nearly the same IoU; the normal error tells them apart."""
    import trimesh

    from backend.evaluation import metrics
    from backend.evaluation.truth import Truth

    truth = Truth(DemoObject("sphere", "red"), eval_res=48)
    smooth = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    rng = np.random.default_rng(0)
    bumps = 1.0 + 0.04 * np.sin(40 * smooth.vertices[:, 0]) * np.sin(40 * smooth.vertices[:, 1]) * np.sin(
        40 * smooth.vertices[:, 2]
    )
    pitted = smooth.vertices * (bumps + 0.005 * rng.standard_normal(len(bumps)))[:, None]

    def scores(vertices):
        inside = metrics.mesh_inside(vertices, smooth.faces, 48, 1.0)
        return metrics.iou(inside, truth.cell_occ), metrics.surface_error(vertices, smooth.faces, truth)

    iou_smooth, err_smooth = scores(smooth.vertices)
    iou_pitted, err_pitted = scores(pitted)
    assert abs(iou_smooth - iou_pitted) < 0.03
    assert err_smooth["normal_deg"] < 3.0 and err_pitted["normal_deg"] > 3 * err_smooth["normal_deg"]
    assert err_smooth["chamfer"] < 0.01


def test_contact_sheet_marks_wrong_results():
    from backend.evaluation.thumbnails import Tile, contact_sheet, demo_object_mesh, render_mesh

    v, f, c = demo_object_mesh("torus", "yellow", resolution=40)
    image = render_mesh(v, f, c, size=64, elevation_deg=60.0)
    assert image.shape == (64, 64, 3)
    yellow = (image[..., 0] > 150) & (image[..., 1] > 120) & (image[..., 2] < 80)
    assert yellow.mean() > 0.1 and yellow[32, 32] == 0  # seen from above, the hole shows the background
    sheet = np.asarray(
        contact_sheet([Tile(image, ["right"], True), Tile(image, ["wrong"], False)], columns=2)
    )
    red = (sheet[..., 0] > 180) & (sheet[..., 1] < 60) & (sheet[..., 2] < 60)
    assert red[:, sheet.shape[1] // 2 :].any() and not red[:, : sheet.shape[1] // 2].any()


def test_score_mesh_tells_shape_and_colour(tmp_path, capsys):
    import numpy as np
    import trimesh

    from backend import demo_world

    score = load_script("score_mesh")
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=demo_world.SPHERE_RADIUS)
    red = np.tile(np.array([[200, 10, 10, 255]], dtype=np.uint8), (len(sphere.vertices), 1))
    np.savez(tmp_path / "mesh.npz", vertices=sphere.vertices, faces=sphere.faces, colors=red)
    assert score.main([str(tmp_path), "a red sphere"]) == 0
    printed = capsys.readouterr().out
    assert "best match: sphere" in printed and "the asked object" in printed and "Chamfer" in printed
    assert score.main([str(tmp_path), "a blue sphere"]) == 1  # wrong colour
    assert score.main([str(tmp_path), "a red cube"]) == 1  # a fair IoU (~0.7), but a sphere fits better
    assert score.main([str(tmp_path / "missing"), "a red sphere"]) == 2
    assert score.main([str(tmp_path), "a teapot"]) == 2


def test_volume_ratio_tells_swollen_from_shrunken(tmp_path):
    import numpy as np
    import trimesh

    from backend import demo_world
    from backend.evaluation import metrics
    from backend.evaluation.truth import Truth

    truth = Truth(demo_world.parse_prompt("a red sphere"), eval_res=48)
    ratios = {}
    for scale in (0.8, 1.0, 1.2):
        sphere = trimesh.creation.icosphere(subdivisions=4, radius=demo_world.SPHERE_RADIUS * scale)
        red = np.tile(np.array([[200, 10, 10, 255]], dtype=np.uint8), (len(sphere.vertices), 1))
        np.savez(tmp_path / "mesh.npz", vertices=sphere.vertices, faces=sphere.faces, colors=red)
        ratios[scale] = metrics.score_mesh(tmp_path, truth)["volume_ratio"]
    # The volume goes with the cube of the scale (0.51, 1, 1.73), to the grid's resolution.
    assert abs(ratios[1.0] - 1.0) < 0.06
    assert abs(ratios[0.8] - 0.512) < 0.06 and abs(ratios[1.2] - 1.728) < 0.1


def test_mesh_inside_is_exact_where_mesh_edges_lie_over_cell_centres(monkeypatch):
    import numpy as np
    import trimesh

    from backend.evaluation import metrics

    # A box of side 0.8 about the origin: its faces' diagonals (x = y) pass exactly over cell centres of
    # the 64^3 grid, 26 of which per axis lie inside it.
    box = trimesh.creation.box(extents=(0.8, 0.8, 0.8))
    vertices, faces = np.asarray(box.vertices), np.asarray(box.faces)
    inside = metrics.mesh_inside(vertices, faces, 64, 1.0)
    assert int(inside.sum()) == 26**3 and not inside[:, :, -1].any()
    # Rays exactly through the cell centres counted such an edge in both triangles, so the crossing
    # cancelled and those columns stayed inside up to the top of the grid.
    monkeypatch.setattr(metrics, "COLUMN_JITTER", (0.0, 0.0))
    assert metrics.mesh_inside(vertices, faces, 64, 1.0)[:, :, -1].any()
