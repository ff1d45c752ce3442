"""Loading diffusers priors by path (tiny random models), their interface, and load errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from backend.engine.prior import Prior, PriorCache, load_prior, resolve_device
from backend.engine.rules import score_distillation_loss
from backend.engine.rules.sds import SDS
from backend.engine.tiny_prior import make_tiny_prior
from backend.engine.views import VIEWS, view_prompt
from backend.errors import DreamsmithError, ModelLoadError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def latent(tiny_latent_prior: Path) -> Prior:
    return load_prior(str(tiny_latent_prior), CPU)


@pytest.fixture(scope="module")
def pixel(tiny_pixel_prior: Path) -> Prior:
    return load_prior(str(tiny_pixel_prior), CPU)


def test_latent_prior_loads_frozen_in_float32(latent: Prior) -> None:
    assert latent.is_latent and latent.vae is not None
    assert latent.dtype == torch.float32 and latent.device == CPU
    assert latent.input_size == 32  # 16x16 latents, VAE downsamples by 2
    assert latent.num_train_timesteps == 1000 and latent.alphas_cumprod.shape == (1000,)
    assert latent.alphas_cumprod.dtype == torch.float32
    assert (latent.alphas_cumprod[1:] < latent.alphas_cumprod[:-1]).all()
    for module in (latent.unet, latent.vae, latent.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


def test_pixel_prior_loads_without_vae(pixel: Prior) -> None:
    assert not pixel.is_latent and pixel.vae is None
    assert pixel.input_size == 32 and pixel.channels == 3


def test_encode_prompts_gives_uncond_and_four_views(latent: Prior) -> None:
    emb = latent.encode_prompts("a red cube", "blurry")
    assert set(emb.views) == set(VIEWS)
    for v in VIEWS:
        assert emb.views[v].shape == emb.uncond.shape == (1, 77, 32)
    assert not torch.allclose(emb.views["front"], emb.views["back"])
    assert not torch.allclose(emb.views["front"], emb.uncond)
    alone = latent._encode_text([view_prompt("a red cube", "side")])
    assert torch.allclose(emb.views["side"], alone, atol=1e-5)
    assert emb.for_views(["back", "front"]).shape == (2, 77, 32)


@pytest.mark.parametrize("which", ["latent", "pixel"])
def test_to_model_space_is_differentiable(which: str, request: pytest.FixtureRequest) -> None:
    prior: Prior = request.getfixturevalue(which)
    rgb = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    x = prior.to_model_space(rgb)
    size = prior.input_size // prior.vae_scale_factor
    assert x.shape == (2, prior.channels, size, size) and x.dtype == torch.float32
    (x**2).sum().backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_pixel_model_space_is_minus_one_to_one(pixel: Prior) -> None:
    rgb = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(pixel.to_model_space(rgb), rgb * 2 - 1)


def test_latent_encoding_is_deterministic(latent: Prior) -> None:
    rgb = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(latent.to_model_space(rgb), latent.to_model_space(rgb))


def test_predict_noise_shapes_and_no_grad(latent: Prior) -> None:
    emb = latent.encode_prompts("a red cube")
    x = torch.randn(3, 4, 16, 16, requires_grad=True)
    eps = latent.predict_noise(x, torch.tensor([10, 500, 990]), emb.for_views(["front", "side", "back"]))
    assert eps.shape == x.shape and eps.dtype == torch.float32 and not eps.requires_grad
    assert torch.isfinite(eps).all()
    shared = latent.predict_noise(x, 500, emb.uncond)  # scalar t, one embedding for the batch
    assert shared.shape == x.shape


def test_sds_through_the_vae_reaches_the_image(latent: Prior) -> None:
    emb = latent.encode_prompts("a blue sphere")
    rgb = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    x = latent.to_model_space(rgb)
    cond = emb.for_views(["front", "overhead"])
    grad = SDS(100.0).gradient(latent, x, 600, cond, emb.uncond, torch.Generator().manual_seed(0))
    score_distillation_loss(x, grad).backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def _assert_readable(exc: pytest.ExceptionInfo[ModelLoadError], *needles: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message and len(message) < 400
    for needle in needles:
        assert needle in message, message


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelLoadError) as exc:
        load_prior(str(missing), CPU)
    _assert_readable(exc, str(missing), "not a diffusers model folder", "existing folder")


def test_paths_that_are_not_models_all_get_the_same_message(tmp_path: Path) -> None:
    """The service passes model paths from HTTP clients: the answer must not tell them which paths exist."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    messages = set()
    for path in (tmp_path / "missing", tmp_path / "a-file", tmp_path / "a-folder", tmp_path / "a-file" / "x"):
        with pytest.raises(ModelLoadError) as exc:
            load_prior(str(path), CPU)
        messages.add(str(exc.value).replace(str(path), "PATH"))
    assert len(messages) == 1, messages


def test_folder_that_is_not_a_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ModelLoadError) as exc:
        load_prior(str(tmp_path), CPU)
    _assert_readable(exc, "model_index.json")


def test_missing_unet_is_a_clear_error(tiny_latent_prior: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_latent_prior, broken, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(ModelLoadError) as exc:
        load_prior(str(broken), CPU)
    _assert_readable(exc, "unet/")


def test_corrupt_component_is_a_clear_error(tiny_pixel_prior: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pixel_prior, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError) as exc:
        load_prior(str(broken), CPU)
    _assert_readable(exc, "unet")


def test_model_without_unet2d_is_refused(tiny_pixel_prior: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_pixel_prior, other)
    index = json.loads((other / "model_index.json").read_text())
    index["_class_name"] = "FluxPipeline"
    index.pop("unet")
    index["transformer"] = ["diffusers", "FluxTransformer2DModel"]
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError) as exc:
        load_prior(str(other), CPU)
    _assert_readable(exc, "UNet2DConditionModel")


def test_unreachable_hub_id_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> str:
        raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot reach https://huggingface.co\nretry")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ModelLoadError) as exc:
        load_prior("someone/some-model", CPU)
    _assert_readable(exc, "someone/some-model", "local")


def test_prior_cache_reuses_and_evicts(tiny_latent_prior: Path, tiny_pixel_prior: Path) -> None:
    cache = PriorCache(max_models=1)
    first = cache.get(str(tiny_pixel_prior), CPU)
    assert cache.get(str(tiny_pixel_prior), CPU) is first
    assert cache.loaded() == [str(tiny_pixel_prior)]
    cache.get(str(tiny_latent_prior), CPU)
    assert cache.loaded() == [str(tiny_latent_prior)]
    assert cache.get(str(tiny_pixel_prior), CPU) is not first  # was evicted, loaded again


def test_tiny_prior_weights_follow_the_seed(tmp_path: Path) -> None:
    def unet_bytes(seed: int) -> bytes:
        path = make_tiny_prior(tmp_path / f"s{seed}-{len(list(tmp_path.iterdir()))}", pixel=True, seed=seed)
        return next((path / "unet").glob("*.safetensors")).read_bytes()

    assert unet_bytes(0) == unet_bytes(0)
    assert unet_bytes(0) != unet_bytes(1)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DreamsmithError, match="cuda"):
            resolve_device("cuda")


def test_a_model_folder_may_recommend_t_max(tiny_pixel_prior: Path, tmp_path: Path) -> None:
    from backend.config import DEFAULT_T_MAX, GenerationConfig
    from backend.engine.optimize import DistillationRun

    assert load_prior(str(tiny_pixel_prior), CPU).recommended == {}
    folder = tmp_path / "recommends"
    shutil.copytree(tiny_pixel_prior, folder)
    (folder / "dreamsmith.json").write_text(json.dumps({"t_max": 0.6, "comment": "ignored"}))
    prior = load_prior(str(folder), CPU)
    assert prior.recommended == {"t_max": 0.6}
    # A run that leaves t_max unset takes the model's; one that sets it keeps its own; others get 0.98.
    run = DistillationRun(GenerationConfig(prompt="a red cube", method="sds", steps=2), prior, CPU)
    assert run.cfg.t_max == 0.6 and (run.supervision.schedule.t_min, run.supervision.schedule.t_max) == (
        20,
        600,
    )
    run = DistillationRun(GenerationConfig(prompt="a red cube", method="sds", t_max=0.9), prior, CPU)
    assert run.cfg.t_max == 0.9
    run = DistillationRun(GenerationConfig(prompt="a red cube"), load_prior(str(tiny_pixel_prior), CPU), CPU)
    assert run.cfg.t_max == DEFAULT_T_MAX
    for bad in (
        '{"t_max": 7}',
        '{"t_max": "high"}',
        "not json",
        "[0.6]",
        '{"guidance_scale": -3}',
        '{"guidance_scale": {"sds": 5, "teleport": 3}}',
    ):
        (folder / "dreamsmith.json").write_text(bad)
        with pytest.raises(ModelLoadError) as exc:
            load_prior(str(folder), CPU)
        _assert_readable(exc, "dreamsmith.json")


def _unet_weight(prior: Prior) -> torch.Tensor:
    return next(prior.unet.parameters()).detach().flatten()[:8].clone()


def test_a_model_replaced_in_its_folder_is_loaded_again(tmp_path: Path) -> None:
    """The cache knows a model by its files, not its path: new weights in the folder are new weights."""
    folder = tmp_path / "model"
    make_tiny_prior(folder, pixel=True, seed=0)
    cache = PriorCache()
    first = cache.get(str(folder), CPU)
    assert cache.get(str(folder), CPU) is first
    shutil.rmtree(folder)
    make_tiny_prior(folder, pixel=True, seed=1)
    second = cache.get(str(folder), CPU)
    assert second is not first and not torch.equal(_unet_weight(first), _unet_weight(second))
    assert cache.loaded() == [str(folder)]  # the old weights are not kept beside the new ones


def test_a_failed_load_is_tried_again_once_the_model_is_fixed(tiny_pixel_prior: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_pixel_prior, folder)
    cache = PriorCache()
    good = cache.get(str(folder), CPU)
    weights = next((folder / "unet").glob("*.safetensors"))
    original = weights.read_bytes()
    weights.write_bytes(b"broken")
    for _ in range(2):  # broken: fails (and is not served from the cache), every time
        with pytest.raises(ModelLoadError):
            cache.get(str(folder), CPU)
    weights.write_bytes(original)
    fixed = cache.get(str(folder), CPU)
    assert fixed is not good and torch.equal(_unet_weight(fixed), _unet_weight(good))


@pytest.mark.parametrize(
    ("index", "needle"),
    [
        ("[]", "not a JSON object"),
        ('"a string"', "not a JSON object"),
        ('{"unet": 5}', "'unet'"),
        ('{"unet": ["diffusers"]}', "'unet'"),
        ("{broken", "unreadable"),
        ("\xff\xfe", "unreadable"),
    ],
)
def test_a_malformed_model_index_is_a_clear_error(index: str, needle: str, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_bytes(
        index.encode("latin-1").decode("unicode_escape").encode("latin-1")
    )
    with pytest.raises(ModelLoadError) as exc:
        load_prior(str(folder), CPU)
    _assert_readable(exc, "model_index.json", needle)


def test_huge_model_metadata_is_refused_unread(tiny_pixel_prior: Path, tmp_path: Path) -> None:
    import resource
    import time

    folder = tmp_path / "model"
    shutil.copytree(tiny_pixel_prior, folder)
    index = folder / "model_index.json"
    index.write_bytes(index.read_bytes() + b" " * 16)
    with open(index, "r+b") as f:  # 1 GiB of trailing spaces on paper (sparse), valid JSON if read whole
        f.truncate(1 << 30)
    config = folder / "unet" / "config.json"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as exc:
        load_prior(str(folder), CPU)
    _assert_readable(exc, "model_index.json", "too large")
    assert time.monotonic() - started < 10
    shutil.copy(tiny_pixel_prior / "model_index.json", index)
    with open(config, "r+b") as f:
        f.truncate(256 << 20)
    with pytest.raises(ModelLoadError) as exc:
        load_prior(str(folder), CPU)
    _assert_readable(exc, "config.json", "too large")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 200 * 1024, grown_kib  # neither file was read into memory


def test_a_model_folder_may_recommend_a_guidance_scale_per_rule(
    tiny_pixel_prior: Path, tmp_path: Path
) -> None:
    from backend.config import GenerationConfig
    from backend.engine.optimize import DistillationRun

    folder = tmp_path / "recommends"
    shutil.copytree(tiny_pixel_prior, folder)
    (folder / "dreamsmith.json").write_text(json.dumps({"guidance_scale": {"sds": 5, "asd": 3}}))
    prior = load_prior(str(folder), CPU)
    assert prior.recommended == {"guidance_scale": {"sds": 5.0, "asd": 3.0}}

    def guidance(**kw: object) -> float:
        run = DistillationRun(GenerationConfig(prompt="a red cube", steps=2, **kw), prior, CPU)  # type: ignore[arg-type]
        assert run.cfg.guidance_scale == run.supervision.rule.guidance_scale  # recorded as used
        return float(run.supervision.rule.guidance_scale)

    assert guidance(method="tp-sds") == 5.0 and guidance(method="asd") == 3.0
    assert guidance(method="csd") == 100.0  # no recommendation for CSD: the rule's default
    assert guidance(method="sds", guidance_scale=42.0) == 42.0  # the user's own value wins
    assert guidance(method="sds", guidance_scale=0.0) == 5.0  # 0 means "default", as in the API
    (folder / "dreamsmith.json").write_text(json.dumps({"guidance_scale": 12}))
    assert load_prior(str(folder), CPU).recommended == {"guidance_scale": 12.0}


def test_a_model_folder_may_recommend_a_depth_variance_weight(tiny_pixel_prior: Path, tmp_path: Path) -> None:
    from backend.config import GenerationConfig
    from backend.engine.optimize import DistillationRun
    from backend.errors import ModelLoadError

    folder = tmp_path / "recommends"
    shutil.copytree(tiny_pixel_prior, folder)
    (folder / "dreamsmith.json").write_text(json.dumps({"lambda_depth_variance": 250}))
    prior = load_prior(str(folder), CPU)
    assert prior.recommended == {"lambda_depth_variance": 250.0}

    def weight(model_prior: object, **kw: object) -> float | None:
        cfg = GenerationConfig(prompt="a red cube", steps=2, **kw)  # type: ignore[arg-type]
        return DistillationRun(cfg, model_prior, CPU).cfg.lambda_depth_variance  # type: ignore[arg-type]

    assert weight(prior) == 250.0
    assert weight(prior, lambda_depth_variance=0.0) == 0.0  # an explicit 0 switches it off
    assert weight(load_prior(str(tiny_pixel_prior), CPU)) == 0.0  # no recommendation: off
    (folder / "dreamsmith.json").write_text(json.dumps({"lambda_depth_variance": -1}))
    with pytest.raises(ModelLoadError, match="lambda_depth_variance"):
        load_prior(str(folder), CPU)
