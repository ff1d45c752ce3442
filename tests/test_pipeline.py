"""End to end on CPU: tiny random diffusers models loaded by path, all four methods, files a user opens."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from backend.config import ExportConfig, GenerationConfig
from backend.engine.checkpoint import load_checkpoint, save_checkpoint
from backend.engine.methods import METHODS
from backend.engine.pipeline import Progress, export_checkpoint, generate
from backend.engine.prior import PriorCache
from backend.errors import DreamsmithError, GenerationCancelled

ROOT = Path(__file__).resolve().parents[1]


def small_config(model: Path, method: str, **kw) -> GenerationConfig:
    return GenerationConfig(
        prompt="a red cube",
        model=str(model),
        method=method,
        steps=kw.pop("steps", 3),
        seed=kw.pop("seed", 7),
        render_size=32,
        samples_per_ray=24,
        preview_every=2,
        export=ExportConfig(mesh_resolution=32, target_faces=2000),
        **kw,
    )


@pytest.fixture(scope="module")
def priors() -> PriorCache:
    return PriorCache()


def check_outputs(out: Path, with_field: bool = True) -> dict[str, np.ndarray]:
    for name in ("mesh.glb", "mesh.npz", "preview.png") + (("field.pt",) if with_field else ()):
        assert (out / name).is_file(), name
    scene = trimesh.load(out / "mesh.glb")
    mesh = scene.to_geometry() if isinstance(scene, trimesh.Scene) else scene
    assert len(mesh.faces) > 0
    with np.load(out / "mesh.npz") as data:
        arrays = {k: data[k] for k in data.files}
    assert arrays["vertices"].dtype == np.float32 and arrays["vertices"].shape[1] == 3
    assert arrays["faces"].dtype == np.int32 and arrays["faces"].shape[1] == 3
    assert arrays["colors"].dtype == np.uint8 and arrays["colors"].shape == (len(arrays["vertices"]), 4)
    assert arrays["faces"].max() < len(arrays["vertices"])
    assert len(mesh.faces) == len(arrays["faces"])
    return arrays


@pytest.mark.parametrize("kind", ["tiny_latent_prior", "tiny_pixel_prior"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_writes_a_mesh(kind, method, request, tmp_path, priors):
    model = request.getfixturevalue(kind)
    seen: list[Progress] = []
    result = generate(small_config(model, method), tmp_path, on_progress=seen.append, priors=priors)
    check_outputs(tmp_path)
    assert result.n_faces > 0 and result.n_vertices > 0
    steps = [p.step for p in seen if p.phase == "optimizing"]
    assert steps == [1, 2, 3]
    assert all(p.loss is not None and np.isfinite(p.loss) for p in seen if p.phase == "optimizing")
    assert any(p.preview_png for p in seen), "a preview every preview_every steps"
    assert [p.phase for p in seen][0] == "loading model" and seen[-1].phase == "done"


def test_same_seed_gives_identical_arrays(tiny_latent_prior, tmp_path, priors):
    cfg = small_config(tiny_latent_prior, "tp-asd", steps=4, seed=3)
    a = check_outputs(generate(cfg, tmp_path / "a", priors=priors).files["mesh.npz"].parent)
    b = check_outputs(generate(cfg, tmp_path / "b", priors=priors).files["mesh.npz"].parent)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = check_outputs(
        generate(small_config(tiny_latent_prior, "tp-asd", steps=4, seed=4), tmp_path / "c", priors=priors)
        .files["mesh.npz"]
        .parent
    )
    assert a["vertices"].shape != c["vertices"].shape or not np.array_equal(a["vertices"], c["vertices"])


def test_stop_flag_cancels_within_one_step(tiny_pixel_prior, tmp_path, priors):
    steps_done: list[int] = []

    def on_progress(p: Progress) -> None:
        if p.phase == "optimizing":
            steps_done.append(p.step)

    with pytest.raises(GenerationCancelled):
        generate(
            small_config(tiny_pixel_prior, "sds", steps=50),
            tmp_path,
            on_progress=on_progress,
            should_stop=lambda: len(steps_done) >= 2,
            priors=priors,
        )
    assert steps_done == [1, 2]
    assert not (tmp_path / "mesh.glb").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backend", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_cli_generates_files(tiny_pixel_prior, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(
        "generate", "a red cube", "--model", str(tiny_pixel_prior), "--method", "asd", "--steps", "2",
        "--render-size", "32", "--mesh-resolution", "32", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    check_outputs(out)
    assert str(out / "mesh.glb") in proc.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["generate", "a red cube", "--method", "dreamfusion"], "method"),
        (["generate", ""], "prompt"),
        (["generate", "   "], "prompt"),
        (["generate", "a red cube", "--steps", "0"], "steps"),
        (["generate", "a red cube", "--steps", "-5"], "steps"),
        (["generate", "a red cube", "--render-size", "4"], "render_size"),
        (["generate", "a red cube", "--model", "/nonexistent/model/dir"], "/nonexistent/model/dir"),
    ],
)
def test_cli_bad_input_exits_2_with_a_clear_line(args, words):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert words in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    proc = run_cli("generate", "a red cube", "--model", str(tmp_path), "--steps", "2")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(tmp_path) in proc.stderr


def read_arrays(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "mesh.npz") as data:
        return {k: data[k] for k in data.files}


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_saved_field_exports_the_same_mesh_again(tiny_pixel_prior, tmp_path, priors):
    cfg = small_config(tiny_pixel_prior, "tp-sds", steps=3)
    generate(cfg, tmp_path / "run", priors=priors)
    ckpt = load_checkpoint(tmp_path / "run" / "field.pt")
    assert ckpt.step == 3 and ckpt.config["prompt"] == "a red cube" and ckpt.resumable
    export_checkpoint(ckpt, cfg.export, tmp_path / "again")
    check_outputs(tmp_path / "again", with_field=False)
    assert_same_arrays(read_arrays(tmp_path / "run"), read_arrays(tmp_path / "again"))
    # Other export settings, same field: a different mesh.
    finer = ExportConfig(mesh_resolution=48, target_faces=2000, smoothing=0.0)
    export_checkpoint(ckpt, finer, tmp_path / "finer")
    assert len(read_arrays(tmp_path / "finer")["faces"]) != len(read_arrays(tmp_path / "run")["faces"])


@pytest.mark.parametrize("lr_decay,stratified", [(1.0, False), (0.2, True)])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(
    tiny_latent_prior, tmp_path, priors, lr_decay, stratified
):
    def config() -> GenerationConfig:
        cfg = small_config(tiny_latent_prior, "asd", steps=5, lr_decay=lr_decay)
        return dataclasses.replace(
            cfg, camera=dataclasses.replace(cfg.camera, stratified_elevation=stratified)
        )

    whole = generate(config(), tmp_path / "whole", priors=priors)
    seen: list[int] = []
    with pytest.raises(GenerationCancelled):
        generate(
            config(),
            tmp_path / "part",
            should_stop=lambda: bool(seen) and seen[-1] >= 2,
            on_progress=lambda p: seen.append(p.step) if p.phase == "optimizing" else None,
            priors=priors,
            checkpoint_on_stop=True,
        )
    ckpt = load_checkpoint(tmp_path / "part" / "field.pt")
    assert ckpt.step == 2 and ckpt.resumable
    resumed = generate(config(), tmp_path / "part", priors=priors, resume=ckpt)
    assert_same_arrays(
        read_arrays(whole.files["mesh.npz"].parent), read_arrays(resumed.files["mesh.npz"].parent)
    )


def test_a_warm_start_begins_from_the_given_field(tiny_pixel_prior, tmp_path, priors):
    generate(small_config(tiny_pixel_prior, "sds", steps=3), tmp_path / "a", priors=priors)
    ckpt = load_checkpoint(tmp_path / "a")
    cold = generate(small_config(tiny_pixel_prior, "sds", steps=1, seed=9), tmp_path / "cold", priors=priors)
    warm = generate(
        small_config(tiny_pixel_prior, "sds", steps=1, seed=9),
        tmp_path / "warm",
        priors=priors,
        init_field=ckpt,
    )
    warm_ckpt = load_checkpoint(tmp_path / "warm")
    # One step from the saved field stays close to it; the cold run started elsewhere.
    drift = {
        k: (warm_ckpt.geometry_state[k] - ckpt.geometry_state[k]).abs().max() for k in ckpt.geometry_state
    }
    assert max(float(v) for v in drift.values()) < 0.05
    assert not np.array_equal(
        read_arrays(cold.files["mesh.npz"].parent)["vertices"],
        read_arrays(warm.files["mesh.npz"].parent)["vertices"],
    )


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "field.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DreamsmithError, match="not a readable field checkpoint"):
        load_checkpoint(tmp_path / "field.pt")
    with pytest.raises(DreamsmithError, match="No field checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoints_are_written_atomically(tiny_pixel_prior, tmp_path, priors):
    generate(small_config(tiny_pixel_prior, "sds", steps=2), tmp_path, priors=priors)
    ckpt = load_checkpoint(tmp_path)
    save_checkpoint(tmp_path / "copy.pt", ckpt)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    assert load_checkpoint(tmp_path / "copy.pt").geometry == ckpt.geometry


def test_cli_export_resume_and_set(tiny_pixel_prior, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(
        "generate", "a red cube", "--model", str(tiny_pixel_prior), "--steps", "2", "--render-size", "32",
        "--mesh-resolution", "32", "--set", "samples_per_ray=16", "--set", "lr_grid=0.02", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(out / "field.pt")
    assert ckpt.config["samples_per_ray"] == 16 and ckpt.config["lr_grid"] == 0.02
    proc = run_cli("export", str(out / "field.pt"), "--out", str(tmp_path / "smooth"), "--smoothing", "2")
    assert proc.returncode == 0, proc.stderr
    check_outputs(tmp_path / "smooth", with_field=False)
    proc = run_cli("generate", "--resume", str(out / "field.pt"), "--steps", "3")
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(out / "field.pt").step == 3
    for args, words in (
        (["generate", "--resume", str(out / "field.pt"), "--steps", "2"], "--steps above"),
        (
            ["generate", "--resume", str(out / "field.pt"), "--steps", "9", "--seed", "3"],
            "seed cannot change",
        ),
        (["generate", "a red cube", "--set", "lr_grid=-1"], "lr_grid"),
        (["generate", "a red cube", "--set", "colour=red"], "colour: unknown setting"),
        (["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")], "No field checkpoint"),
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only", "full"])
def test_cli_output_folder_problems_are_one_line_before_the_optimization(where, tmp_path, request):
    """An --out that cannot take the result is said at once, in one line naming it (exit 1)."""
    if where == "a file":
        out = tmp_path / "out"
        out.write_text("not a folder")
    elif where == "under a file":
        (tmp_path / "file").write_text("not a folder")
        out = tmp_path / "file" / "out"
    elif where == "read-only":
        out = request.getfixturevalue("read_only_dir") / "out"
    else:
        disk = request.getfixturevalue("small_disk")
        request.getfixturevalue("fill_disk")(disk, 512 << 10)
        out = disk / "out"
    proc = run_cli("generate", "a red cube", "--steps", "2", "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(out) in lines[0]
    assert "optimizing" not in proc.stderr + proc.stdout  # nothing was optimized first
    assert not out.is_dir() or not [p for p in out.iterdir() if p.name != "filler"]


def test_cli_cleans_up_what_a_killed_run_left_in_its_folder(tiny_pixel_prior, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    orphan = out / ".mesh.glb.abc123.tmp"
    orphan.write_bytes(b"half of a mesh")
    proc = run_cli(
        "generate", "a red cube", "--model", str(tiny_pixel_prior), "--steps", "1",
        "--render-size", "16", "--mesh-resolution", "16", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not orphan.exists() and (out / "mesh.glb").is_file()
