"""The prompt-amortized generator: its field as a geometry, its training (loss, resume, two processes),
instant generation end to end, Refine from its field, and bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.config import ExportConfig, GenerationConfig
from backend.engine.amortized import AmortizedRun, PerPromptSupervision
from backend.engine.checkpoint import load_checkpoint
from backend.engine.generator import (
    GeneratorConfig,
    GeneratorLoadError,
    TextEmbedder,
    TriplaneGenerator,
    load_generator,
)
from backend.engine.geometry import build_geometry
from backend.engine.geometry.triplane import TriplaneConfig, TriplaneField
from backend.engine.pipeline import Progress, generate
from backend.engine.prior import load_prior
from tests.conftest import TINY_GENERATOR_PROMPTS

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def small_generator_config(dim: int, density: str = "volsdf") -> GeneratorConfig:
    field = TriplaneConfig(resolution=16, channels=8, hidden_dim=16, density=density)
    return GeneratorConfig(embedding_dim=dim, base_resolution=4, base_channels=16, field=field)


@pytest.fixture(scope="module")
def pixel_prior(tiny_pixel_prior: Path):  # type: ignore[no-untyped-def]
    return load_prior(str(tiny_pixel_prior), CPU)


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "backend", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


# ---------------------------------------------------------------------------------------------------------
# The generator and its field


@pytest.mark.parametrize("density", ["volsdf", "softplus", "exp"])
def test_generator_forward_shapes_and_the_geometry_interface(density: str) -> None:
    torch.manual_seed(0)
    gen = TriplaneGenerator(small_generator_config(32, density))
    emb = torch.randn(3, 32)
    planes = gen.planes(emb)
    assert planes.shape == (3, 3, 8, 16, 16)
    fields = gen.fields(emb)
    assert len(fields) == 3 and all(isinstance(f, TriplaneField) for f in fields)
    x = torch.rand(500, 3) * 2.4 - 1.2
    sigma, features = fields[0].density_and_features(x)
    assert sigma.shape == (500,) and features.shape == (500, fields[0].feature_dim)
    assert (sigma >= 0).all() and (sigma[(x.abs() > 1).any(-1)] == 0).all()  # nothing outside the bound
    albedo = fields[0].albedo_from_features(features)
    assert albedo.shape == (500, 3) and (albedo >= 0).all() and (albedo <= 1).all()
    normals = fields[0].normals(x[:50])
    assert torch.allclose(normals.norm(dim=-1), torch.ones(50), atol=1e-4)
    # Gradients of a render-like loss reach the generator's decoder (the planes are its output).
    (sigma.sum() + albedo.sum() + normals.sum()).backward()
    assert gen.to_base.weight.grad is not None and gen.to_base.weight.grad.abs().sum() > 0
    # Every field starts as the sphere of radius r0 whatever the prompt: density largest at the centre.
    centre, far = torch.zeros(1, 3), torch.tensor([[0.9, 0.0, 0.0]])
    assert fields[1].density(centre) > 1.0 > fields[1].density(far)


def test_the_exp_density_scales_the_softplus_ball_and_meshes_at_the_silhouette_level() -> None:
    torch.manual_seed(0)
    x = torch.rand(400, 3) * 2.0 - 1.0
    planes = torch.randn(3, 8, 16, 16)
    soft = TriplaneField(TriplaneConfig(resolution=16, channels=8, density="softplus"), planes=planes)
    exp = TriplaneField(TriplaneConfig(resolution=16, channels=8, density="exp"), planes=planes)
    assert torch.allclose(exp.density(x), soft.density(x), rtol=1e-4, atol=1e-6)  # f = 0: the same ball
    with torch.no_grad():  # f = log 3 everywhere: exp triples the density, softplus adds log 3 before it
        for field in (soft, exp):
            field.heads.sdf_mlp[-1].bias.fill_(float(torch.log(torch.tensor(3.0))))
    inside = (x.abs() <= 1).all(-1)
    ratio = exp.density(x)[inside] / TriplaneField(exp.cfg, planes=planes).density(x)[inside]
    assert torch.allclose(ratio, torch.full_like(ratio, 3.0), rtol=1e-4)
    assert not torch.allclose(soft.density(x)[inside] / exp.density(x)[inside], torch.ones(int(inside.sum())))
    assert (exp.level_rule(), soft.level_rule()) == ("silhouette", "density")
    with pytest.raises(ValueError, match="triplane density"):
        TriplaneField(TriplaneConfig(density="relu"))


def test_a_generator_field_is_a_standalone_geometry_that_checkpoints_rebuild() -> None:
    torch.manual_seed(1)
    gen = TriplaneGenerator(small_generator_config(32))
    with torch.no_grad():  # a generator that has learned something (the sdf head is no longer 0)
        gen.heads.sdf_mlp[-1].weight.normal_(0, 0.1)
    field = gen.field(torch.randn(32))
    assert field.planes.requires_grad and isinstance(field.planes, torch.nn.Parameter)
    groups = {g["name"]: g for g in field.param_groups(GenerationConfig(prompt="x"))}
    assert set(groups) == {"grid", "mlp"}  # a Refine optimizes the planes and the heads
    # Rebuilt from spec + state_dict (what field.pt holds), it is the same field.
    rebuilt = build_geometry(field.spec())
    rebuilt.load_state_dict(field.state_dict())
    x = torch.rand(300, 3) * 2 - 1
    assert torch.equal(rebuilt.density(x), field.density(x)) and torch.equal(
        rebuilt.albedo(x), field.albedo(x)
    )
    # Optimizing the field (a Refine) leaves the generator as it was.
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    field.heads.sdf_mlp[-1].weight.data.add_(1.0)
    field.planes.data.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in gen.state_dict().items())


# ---------------------------------------------------------------------------------------------------------
# Training


def photometric_loss(run: AmortizedRun, prompts: list[str]) -> float:
    """The truth's photometric loss of each prompt's field from fixed cameras (albedo shading)."""
    from backend.engine.cameras import sample_cameras
    from backend.engine.optimize import RenderedBatch, StepTimer

    total = 0.0
    with torch.no_grad():
        fields = run.generator.fields(torch.stack([run.pooled[p] for p in prompts]))
        for prompt, field in zip(prompts, fields, strict=True):
            cams = sample_cameras(run.cfg.camera, 4, 16, torch.Generator().manual_seed(5), CPU)
            light = torch.tensor([[0.0, -1.0, 1.0]]).expand(4, 3)
            bg = torch.ones(4, 16, 16, 3)
            out = run.renderer.render(field, cams.rays_o, cams.rays_d, "albedo", light, bg, None)
            batch = RenderedBatch(cams, "albedo", light, bg, out)
            total += float(
                run.supervision.supervisions[prompt].loss(batch, None, torch.Generator(), StepTimer())
            )  # type: ignore[attr-defined]
    return total


def test_a_few_training_steps_lower_the_loss_on_two_prompts(pixel_prior) -> None:  # type: ignore[no-untyped-def]
    from backend import demo_world
    from backend.evaluation.supervision import PhotometricTruth

    prompts = ["a red sphere", "a blue cube"]
    cfg = GenerationConfig(
        prompt=prompts[0], steps=60, render_size=16, samples_per_ray=16, shading_warmup_steps=1000
    )
    supervision = PerPromptSupervision({p: PhotometricTruth(demo_world.parse_prompt(p)) for p in prompts})
    embedder = TextEmbedder(pixel_prior.tokenizer, pixel_prior.text_encoder)
    run = AmortizedRun(
        cfg, small_generator_config(embedder.dim), prompts, embedder, None, CPU,
        prompts_per_step=2, lr=1e-2, supervision=supervision,
    )  # fmt: skip
    before = photometric_loss(run, prompts)
    for i in range(cfg.steps):
        assert set(run.step(i).prompts) == set(prompts)  # both prompts every step
    after = photometric_loss(run, prompts)
    assert after < 0.6 * before, (before, after)


def make_run(pixel_prior, steps: int, lr_decay: float = 1.0) -> AmortizedRun:  # type: ignore[no-untyped-def]
    embedder = TextEmbedder(pixel_prior.tokenizer, pixel_prior.text_encoder)
    cfg = GenerationConfig(prompt="a red cube", method="asd", steps=steps, render_size=16, samples_per_ray=16)
    return AmortizedRun(
        cfg, small_generator_config(embedder.dim), TINY_GENERATOR_PROMPTS + ["a green cube"], embedder,
        pixel_prior, CPU, prompts_per_step=2, lr=2e-3, lr_decay=lr_decay,
    )  # fmt: skip


@pytest.mark.parametrize("lr_decay", [1.0, 0.1])
def test_a_resumed_training_ends_with_the_weights_of_an_uninterrupted_one(
    pixel_prior, lr_decay: float
) -> None:  # type: ignore[no-untyped-def]
    straight = make_run(pixel_prior, 6, lr_decay)
    rates = []
    for i in range(6):
        straight.step(i)
        rates.append(straight.optimizer.param_groups[0]["lr"])
    # The rate of step i is lr * decay^(i / 5): from 2e-3 down to 2e-3 * decay at the last step.
    assert rates == pytest.approx([2e-3 * lr_decay ** (i / 5) for i in range(6)])
    first = make_run(pixel_prior, 6, lr_decay)
    for i in range(3):
        first.step(i)
    state = first.state([first.rng_state()])
    resumed = make_run(pixel_prior, 6, lr_decay)
    resumed.restore(state)
    assert resumed.steps_done == 3
    for i in range(3, 6):
        resumed.step(i)
    a, b = straight.generator.state_dict(), resumed.generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], first.generator.state_dict()[k]) for k in a)  # 3 more steps changed them


def test_train_generator_command_writes_a_generator_and_resumes(
    tmp_path: Path, tiny_pixel_prior: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# toy prompts\na red cube\na blue sphere\n\na green cube\n")
    out = tmp_path / "gen"
    common = ["--model", str(tiny_pixel_prior), "--out", str(out), "--no-progress", "--threads", "1"]
    small = [
        "--generator-set",
        "field.resolution=8",
        "--generator-set",
        "base_resolution=4",
        "--set",
        "render_size=16",
    ]
    done = cli(
        "train-generator",
        "--prompts",
        str(prompts),
        "--steps",
        "2",
        "--prompts-per-step",
        "2",
        *common,
        *small,
    )
    assert done.returncode == 0, done.stderr
    loaded = load_generator(str(out))
    assert loaded.info.prompts == ["a red cube", "a blue sphere", "a green cube"] and loaded.info.steps == 2
    for name in ("loss.png", "train_log.json", "README.md", "train_state.pt"):
        assert (out / name).is_file(), name
    assert len(json.loads((out / "train_log.json").read_text())["curve"]) == 2
    # Training into a folder that holds one is refused unless resumed; a resume may not change the method.
    assert cli("train-generator", "--prompts", str(prompts), "--steps", "3", *common).returncode == 2
    bad = cli("train-generator", "--resume", "--method", "sds", "--steps", "3", *common)
    assert bad.returncode == 2 and "cannot change when resuming" in bad.stderr
    bad = cli("train-generator", "--resume", "--lr-decay", "0", "--steps", "3", *common)
    assert bad.returncode == 2 and "--lr-decay must be in (0, 1]" in bad.stderr
    done = cli("train-generator", "--resume", "--steps", "3", *common)
    assert done.returncode == 0, done.stderr
    assert load_generator(str(out)).info.steps == 3
    assert len(json.loads((out / "train_log.json").read_text())["curve"]) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_train_on_their_own_shards_and_end_with_identical_weights(
    tmp_path: Path, tiny_pixel_prior: Path
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
            str(ROOT / "tests" / "generator_dist_worker.py"), str(tiny_pixel_prior), str(tmp_path), "3",
        ],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    assert ranks[0]["shard"] == ["a red cube", "a green cone"] and ranks[1]["shard"] == [
        "a blue sphere",
        "a red sphere",
    ]
    assert set(ranks[0]["drawn"]) <= set(ranks[0]["shard"]) and set(ranks[1]["drawn"]) <= set(
        ranks[1]["shard"]
    )
    a, b = ranks[0]["weights"], ranks[1]["weights"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)  # and they did train: not the initial weights
    assert any(not torch.equal(a[k], v) for k, v in TriplaneGenerator(GeneratorConfig.from_dict(
        {"embedding_dim": 32, "base_resolution": 4, "base_channels": 8, "field": {"resolution": 8, "channels": 4}}
    )).state_dict().items())  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Instant generation and Refine


def test_generate_with_a_generator_writes_the_files_of_a_per_prompt_run(
    tmp_path: Path, tiny_generator: Path, tiny_pixel_prior: Path
) -> None:
    cfg = GenerationConfig(
        prompt="a red cube",
        generator=str(tiny_generator),
        device="cpu",
        export=ExportConfig(mesh_resolution=32),
    )
    phases: list[Progress] = []
    result = generate(cfg, tmp_path / "instant", on_progress=phases.append)
    assert set(result.files) == {"mesh.glb", "mesh.npz", "preview.png", "field.pt"}
    assert result.n_faces > 0 and result.warnings == []
    assert [p.phase for p in phases][:2] == ["loading model", "generating"] and phases[-1].phase == "done"
    ckpt = load_checkpoint(tmp_path / "instant" / "field.pt")
    assert ckpt.geometry["kind"] == "triplane" and ckpt.step == 0
    # Refine: a per-prompt optimization that starts from the instant field, not from the blob.
    refine = GenerationConfig(
        prompt="a red cube", model=str(tiny_pixel_prior), steps=2, render_size=16, preview_every=0,
        export=ExportConfig(mesh_resolution=32),
    )  # fmt: skip
    generate(refine, tmp_path / "refine", init_field=ckpt)
    refined = load_checkpoint(tmp_path / "refine" / "field.pt")
    assert refined.geometry == ckpt.geometry and refined.step == 2
    assert not torch.equal(refined.geometry_state["planes"], ckpt.geometry_state["planes"])


def test_generate_cli_with_a_generator_and_a_prompt_it_never_saw(
    tmp_path: Path, tiny_generator: Path
) -> None:
    out = tmp_path / "out"
    done = cli(
        "generate",
        "a shiny teapot",
        "--generator",
        str(tiny_generator),
        "--out",
        str(out),
        "--mesh-resolution",
        "32",
    )
    assert done.returncode == 0, done.stderr
    for name in ("mesh.glb", "mesh.npz", "preview.png", "field.pt"):
        assert (out / name).is_file(), name
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "outside the generator's training set" in warnings[0]
    assert "'shiny'" in warnings[0] and "'teapot'" in warnings[0]
    # A prompt made of training words (even a new pairing) gives no warning.
    done = cli(
        "generate",
        "a blue cube",
        "--generator",
        str(tiny_generator),
        "--out",
        str(tmp_path / "o2"),
        "--mesh-resolution",
        "32",
    )
    assert done.returncode == 0 and "warning" not in done.stderr


def test_an_unknown_generator_is_a_one_line_error(tmp_path: Path) -> None:
    done = cli(
        "generate", "a red cube", "--generator", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "is not a generator folder" in done.stderr
    assert not (tmp_path / "o").exists()
    (tmp_path / "notgen").mkdir()
    (tmp_path / "notgen" / "model_index.json").write_text("{}")
    with pytest.raises(GeneratorLoadError, match="is not a generator folder"):
        load_generator(str(tmp_path / "notgen"))
    with pytest.raises(GeneratorLoadError, match="demo|generator"):
        load_generator(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------------------------------------
# The shipped demo generator


def test_the_built_in_demo_generator_is_shipped_and_answers_its_held_out_prompts() -> None:
    from backend import demo_world
    from backend.engine.generator import DEMO_GENERATOR_PATH

    demo = load_generator("demo")
    info = demo.info
    # the demo world's 36 objects minus 6 held-out pairs, each shape and each colour still seen in training
    assert len(info.prompts) == 30 and len(info.held_out) == 6
    assert not set(info.prompts) & set(info.held_out)
    held = [demo_world.parse_prompt(p) for p in info.held_out]
    assert len({o.shape for o in held}) == 6 and len({o.colour for o in held}) == 6
    assert info.method == "asd" and (DEMO_GENERATOR_PATH / "README.md").is_file()
    for prompt in info.held_out:
        assert demo.warnings_for(prompt) == []  # its words were all seen, in other pairs
        with torch.no_grad():
            field = demo.field_for(prompt)
            density = field.density(torch.zeros(1, 3))
        assert torch.isfinite(density).all()


def test_a_training_saved_before_a_setting_existed_resumes_at_its_default() -> None:
    """A saved training without `lr_decay` (older than the option) ran at a constant rate: it resumes with
    the default filled in, repeating it is no change, and another value is still refused."""
    import argparse

    from backend import train_generator as tg
    from backend.errors import DreamsmithError

    parser = argparse.ArgumentParser()
    tg.add_arguments(parser)
    old = {k: v for k, v in tg.DEFAULTS.items() if k != "lr_decay"} | {
        "prompts": ["a red cube"],
        "held_out": [],
    }
    settings = tg.settings_for(parser.parse_args(["--resume", "--out", "g"]), old)
    assert settings["lr_decay"] == 1.0 and settings["prompts"] == ["a red cube"]
    assert (
        tg.settings_for(parser.parse_args(["--resume", "--out", "g", "--lr-decay", "1"]), old)["lr_decay"]
        == 1.0
    )
    with pytest.raises(DreamsmithError, match="--lr-decay cannot change when resuming"):
        tg.settings_for(parser.parse_args(["--resume", "--out", "g", "--lr-decay", "0.5"]), old)
