"""The demo prior's scripts end to end at toy sizes: train a few steps, load the result through the engine's
loader, sample it and score it, and run the quality bench on it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

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
    assert not prior.is_latent and prior.input_size == 32 and prior.recommended == {"t_max": 0.6}
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


def test_bench_quality_prints_the_table_and_writes_json_and_plot(trained, tmp_path, capsys):
    bench = load_script("bench_quality")
    out, plot = tmp_path / "quality.json", tmp_path / "quality.png"
    argv = ["--model", str(trained), "--prompts", "a red sphere", "--seeds", "0", "1", "--methods", "sds"]
    argv += ["--steps", "2", "--eval-res", "16", "--mesh-res", "32", "--jobs", "1", "--threads", "1"]
    assert bench.main(argv + ["--out", str(out), "--plot", str(plot)]) == 0
    result = json.loads(out.read_text())
    assert len(result["runs"]) == 2 and plot.stat().st_size > 0
    run = result["runs"][0]
    assert 0.0 <= run["iou"] <= 1.0 and [p["step"] for p in run["curve"]][0] == 0
    assert run["peak_iou"] == max(p["iou"] for p in run["curve"]) and set(run["first_to"]) == {"0.7", "0.85"}
    assert "sds" in result["summary"]
    printed = capsys.readouterr().out
    assert "IoU@0" in printed and "budget used" in printed and "first step at IoU" in printed


def test_bench_quality_refuses_a_prompt_outside_the_world():
    bench = load_script("bench_quality")
    with pytest.raises(ValueError, match="teapot"):
        bench.parse_args(["--prompts", "a teapot"])


def test_score_mesh_tells_shape_and_colour(tmp_path, capsys):
    import numpy as np
    import trimesh

    from backend import demo_world

    score = load_script("score_mesh")
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=demo_world.SPHERE_RADIUS)
    red = np.tile(np.array([[200, 10, 10, 255]], dtype=np.uint8), (len(sphere.vertices), 1))
    np.savez(tmp_path / "mesh.npz", vertices=sphere.vertices, faces=sphere.faces, colors=red)
    assert score.main([str(tmp_path), "a red sphere"]) == 0
    assert "best match: sphere" in capsys.readouterr().out
    assert score.main([str(tmp_path), "a blue sphere"]) == 1  # wrong colour
    assert score.main([str(tmp_path), "a red cube"]) == 1  # a fair IoU (~0.7), but a sphere fits better
    assert score.main([str(tmp_path / "missing"), "a red sphere"]) == 2
    assert score.main([str(tmp_path), "a teapot"]) == 2
