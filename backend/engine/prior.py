"""The frozen 2D diffusion model ("prior") that score distillation queries.

Any diffusers text-to-image model built around a `UNet2DConditionModel`: latent models with a VAE
(Stable Diffusion 1.5 / 2.1-base layout) and pixel-space models without one (the built-in demo prior).
Components are loaded one by one from `model_index.json`, so a folder without `vae/` works too.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.engine.views import VIEWS, view_prompt
from backend.errors import DreamsmithError, ModelLoadError

DEMO_PRIOR_PATH = Path(__file__).resolve().parents[1] / "priors" / "demo"
DEMO_PRIOR_NAME = "demo"
EXAMPLE_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Metadata is read whole, so its size is capped: model_index.json and dreamsmith.json are a few hundred
# bytes; a component's JSON and text files (configs, vocabularies) at most some MiB in real models.
MAX_INDEX_BYTES = 1 << 20
MAX_COMPONENT_METADATA_BYTES = 64 << 20
COMPONENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# The parts of a pipeline a prior is made of: [library, class] pairs in model_index.json.
PRIOR_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None


@dataclass
class PromptEmbeddings:
    """Text embeddings computed once per generation (float32, on the prior's device)."""

    uncond: Tensor  # [1, L, D] negative prompt (or "")
    views: dict[str, Tensor]  # view name in VIEWS -> [1, L, D] for view_prompt(prompt, view)

    def for_views(self, views: list[str]) -> Tensor:
        """[B, L, D] conditional embeddings for a batch of cameras, one view name each."""
        return torch.cat([self.views[v] for v in views], dim=0)


class Prior:
    """A loaded, frozen diffusion model: text encoding, image -> model space, and noise prediction."""

    def __init__(
        self,
        name: str,
        unet: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        vae: Any | None,
        device: torch.device,
        dtype: torch.dtype,
        recommended: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        # Settings the model's makers recommend for score distillation (`dreamsmith.json`), e.g. t_max.
        self.recommended: dict[str, Any] = dict(recommended or {})
        self.unet = unet
        self.text_encoder = text_encoder  # stays on the CPU in float32: run once per generation
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.vae = vae
        self.device = device
        self.dtype = dtype
        self.is_latent = vae is not None
        self.alphas_cumprod: Tensor = scheduler.alphas_cumprod.detach().to("cpu", torch.float32)  # [T]
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.prediction_type: str = getattr(scheduler.config, "prediction_type", "epsilon")
        self.channels = int(unet.config.in_channels)
        sample = unet.config.sample_size
        sample = int(sample[0] if isinstance(sample, (tuple, list)) else sample)
        if vae is not None:
            self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.scaling_factor = float(vae.config.scaling_factor)
            self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        else:
            self.vae_scale_factor = 1
        self.input_size = sample * self.vae_scale_factor  # RGB resolution the model was trained on

    def __repr__(self) -> str:
        kind = "latent" if self.is_latent else "pixel"
        return f"Prior({self.name!r}, {kind}, input_size={self.input_size}, {self.device}, {self.dtype})"

    @torch.no_grad()
    def _encode_text(self, texts: list[str]) -> Tensor:
        tok = self.tokenizer
        max_length = tok.model_max_length
        if not max_length or max_length > 100_000:  # tokenizers saved without a limit
            max_length = self.text_encoder.config.max_position_embeddings
        ids = tok(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        mask = ids.attention_mask if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        return cast(Tensor, self.text_encoder(ids.input_ids, attention_mask=mask)[0].float())  # [N, L, D]

    def encode_prompts(self, prompt: str, negative_prompt: str = "") -> PromptEmbeddings:
        """Encode the negative prompt and the four view-dependent prompts in one text-encoder pass."""
        texts = [negative_prompt] + [view_prompt(prompt, v) for v in VIEWS]
        emb = self._encode_text(texts).to(self.device)
        return PromptEmbeddings(uncond=emb[:1], views={v: emb[i + 1 : i + 2] for i, v in enumerate(VIEWS)})

    def to_model_space(self, rgb: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> x [B, C, h, w] float32, differentiable with respect to `rgb`."""
        if rgb.shape[-2:] != (self.input_size, self.input_size):
            size = (self.input_size, self.input_size)
            # Antialiased when shrinking (a 128 px render seen by a 32 px model must not alias).
            shrink = rgb.shape[-1] > self.input_size
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        x = rgb.to(self.device) * 2.0 - 1.0
        if self.vae is None:
            return x.float()
        # The mean of q(z|x), not a sample: the same render gives the same latent, so runs stay
        # reproducible and the gradient carries no extra VAE noise (DreamFusion-style code samples).
        posterior = self.vae.encode(x.to(self.dtype)).latent_dist
        return cast(Tensor, ((posterior.mean - self.shift_factor) * self.scaling_factor).float())

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor | int, text_emb: Tensor) -> Tensor:
        """eps_phi(x_t; t, y): ONE UNet call. x_t [N, C, h, w], t scalar or [N], text_emb [N or 1, L, D]."""
        n = x_t.shape[0]
        t = torch.as_tensor(t, device=self.device).long().reshape(-1).expand(n)
        if text_emb.shape[0] == 1 and n > 1:
            text_emb = text_emb.expand(n, -1, -1)
        sample = x_t.to(self.device, self.dtype)
        out: Tensor = self.unet(sample, t, encoder_hidden_states=text_emb.to(self.device, self.dtype)).sample
        out = out[:, : self.channels].float()  # drop a learned-variance half if the model has one
        if self.prediction_type == "epsilon":
            return out
        abar = self.alphas_cumprod.to(self.device)[t].view(n, 1, 1, 1)
        x_t = x_t.to(self.device).float()
        if self.prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) x0
            return abar.sqrt() * out + (1 - abar).sqrt() * x_t
        if self.prediction_type == "sample":  # x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
            return (x_t - abar.sqrt() * out) / (1 - abar).sqrt()
        raise ModelLoadError(f"{self.name} predicts {self.prediction_type!r}, which Dreamsmith cannot use.")


# ----------------------------------------------------------------------------------------------------
# Loading


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without CUDA is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DreamsmithError(
            "Device 'cuda' was requested but this PyTorch has no usable CUDA GPU; choose 'cpu' or 'auto'."
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise DreamsmithError(f"Unknown device {name!r}; choose 'auto', 'cpu' or 'cuda'.") from None


@dataclass(frozen=True)
class _Source:
    name: str  # what the user sees ("demo", a path, a hub id)
    location: str  # what from_pretrained gets
    local: bool


def _content_key(src: _Source) -> tuple[Any, ...]:
    """What identifies a model's content without reading it: for a local folder, the size, times and inode
    of model_index.json, dreamsmith.json and every file in the component folders the index names
    (replacing the model in place changes them); for a hub id, the id (the hub versions its content)."""
    if not src.local:
        return (src.location,)
    root = Path(src.location)
    stats = []
    try:
        index = json.loads(_read_capped(root / "model_index.json", MAX_INDEX_BYTES))
    except (OSError, ValueError, ModelLoadError):
        index = {}
    # Component folders are plain names ("unet", "text_encoder"); nothing the index says leads elsewhere.
    components = sorted(k for k in index if COMPONENT_NAME.fullmatch(k)) if isinstance(index, dict) else []
    files = [root / "model_index.json", root / "dreamsmith.json"]
    for name in components:
        with contextlib.suppress(OSError):  # an unreadable folder: the load itself will say so
            files += sorted(p for p in (root / name).rglob("*") if p.is_file())
    for path in files:
        with contextlib.suppress(OSError):
            st = path.stat()
            # ctime and inode too: a copy that keeps size and mtime (cp -p, rsync -t) still changes them.
            stats.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return (src.location, tuple(stats))


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with separators is meant as a folder.
    return model.startswith((".", "~", "/")) or "\\" in model or ":" in model or model.count("/") > 1


def _not_a_model(model: str) -> ModelLoadError:
    # One message for a path that is missing, a file, unreadable or a folder without a model: the service
    # passes paths from HTTP clients, and must not tell them which paths exist on this machine.
    return ModelLoadError(
        f"Model {model} is not a diffusers model folder: pass an existing folder that holds model_index.json, "
        f"unet/, text_encoder/, tokenizer/ and scheduler/, or a hub id such as {EXAMPLE_HUB_ID}."
    )


def _resolve_source(model: str | None) -> _Source:
    if model is None or (model == DEMO_PRIOR_NAME and not Path(model).exists()):
        if not (DEMO_PRIOR_PATH / "model_index.json").is_file():
            raise ModelLoadError(
                f"The built-in demo prior is missing ({DEMO_PRIOR_PATH}); build it first, "
                "or pass a diffusers model folder or hub id as the model."
            )
        return _Source(DEMO_PRIOR_NAME, str(DEMO_PRIOR_PATH), local=True)
    path = Path(model).expanduser()
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError:  # e.g. a name too long for the file system
        exists = is_dir = False
    if exists or _looks_like_path(model):
        if not is_dir:
            raise _not_a_model(model)
        return _Source(model, str(path.resolve()), local=True)
    return _Source(model, model, local=False)


def _read_capped(path: Path, limit: int) -> str:
    """A metadata file's text, refused (ModelLoadError) when larger than `limit` bytes: never read whole."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ModelLoadError(f"{path} is larger than {limit // 1024} KiB, too large for model metadata.")
    return data.decode("utf-8")


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _read_model_index(src: _Source) -> dict[str, Any]:
    if src.local:
        index_path = Path(src.location) / "model_index.json"
        if not index_path.is_file():
            raise _not_a_model(src.name)
    else:
        from huggingface_hub import errors as hub_errors
        from huggingface_hub import hf_hub_download

        try:
            index_path = Path(hf_hub_download(src.location, "model_index.json"))
        except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError) as exc:
            raise ModelLoadError(
                f"Model {src.name!r} is neither a local folder nor an accessible Hugging Face Hub repository; "
                "check the spelling (and your access token for gated models) or pass a local folder."
            ) from exc
        except hub_errors.HFValidationError as exc:
            raise ModelLoadError(
                f"Model {src.name!r} is neither an existing folder nor a valid hub id (owner/name); "
                "check the spelling or pass the path of a local diffusers folder."
            ) from exc
        except hub_errors.RemoteEntryNotFoundError as exc:
            raise ModelLoadError(
                f"Hub repository {src.name!r} has no model_index.json, so it is not a diffusers "
                "text-to-image model; pass a Stable Diffusion 1.5/2.1-style model instead."
            ) from exc
        except Exception as exc:  # offline, DNS, proxy, invalid id ...
            raise ModelLoadError(
                f"Could not download model {src.name!r}: the Hugging Face Hub is unreachable and the model "
                "is not in the local cache; connect to the network once or pass a local diffusers folder."
            ) from exc
    try:
        index = json.loads(_read_capped(index_path, MAX_INDEX_BYTES))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"The model_index.json of {src.name} is unreadable ({_reason(exc)}).") from exc
    if not isinstance(index, dict):
        raise ModelLoadError(
            f"The model_index.json of {src.name} is not a JSON object; it is not a diffusers model."
        )
    for name in PRIOR_COMPONENTS:  # the rest (safety checker, flags...) is not ours to judge
        entry = index.get(name)
        if name in index and not (
            isinstance(entry, list)
            and len(entry) == 2
            and all(v is None or isinstance(v, str) for v in entry)
        ):
            raise ModelLoadError(
                f"The model_index.json of {src.name} lists {name!r} as {json.dumps(entry)[:60]}, not as a "
                "[library, class] pair; it is not a diffusers model index."
            )
    return index


def _check_metadata_sizes(src: _Source, components: list[str]) -> None:
    """Refuse component metadata (configs, tokenizer files) too large to be real, before a library reads it
    whole: a 1 GiB config.json would otherwise cost gigabytes of memory before failing."""
    if not src.local:
        return
    for name in components:
        for path in (Path(src.location) / name).glob("*"):
            metadata = path.suffix in (".json", ".txt", ".model") and path.is_file()
            if metadata and path.stat().st_size > MAX_COMPONENT_METADATA_BYTES:
                raise ModelLoadError(
                    f"{path} is larger than {MAX_COMPONENT_METADATA_BYTES >> 20} MiB, too large for model "
                    "metadata; re-download the model."
                )


def _component_class(index: dict[str, Any], name: str, module: Any, default: Any) -> Any:
    entry = index.get(name)
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str):
        return getattr(module, entry[1], default)
    return default


def load_prior(model: str | None, device: torch.device) -> Prior:
    """Load a frozen text-to-image diffusion model. None -> the demo prior. Raises ModelLoadError."""
    import diffusers
    import transformers

    src = _resolve_source(model)
    index = _read_model_index(src)
    if (index.get("unet") or [None, None])[1] != "UNet2DConditionModel":
        kind = index.get("_class_name", "model")
        raise ModelLoadError(
            f"{src.name} ({kind}) has no UNet2DConditionModel 'unet'; Dreamsmith works with Stable "
            "Diffusion 1.5/2.1-style latent models and pixel-space UNet models."
        )
    is_latent = isinstance(index.get("vae"), (list, tuple)) and index["vae"][0] is not None
    needed = ["unet", "text_encoder", "tokenizer", "scheduler"] + (["vae"] if is_latent else [])
    _check_metadata_sizes(src, needed)
    for name in needed:
        if src.local and not (Path(src.location) / name).is_dir():
            raise ModelLoadError(
                f"{src.name} has no {name}/ folder, which this model needs; re-download the model "
                "or save it again with save_pretrained."
            )
        if name not in index:
            raise ModelLoadError(f"{src.name} lists no {name} in model_index.json; it is not a usable model.")

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    classes = {
        "unet": diffusers.UNet2DConditionModel,
        "vae": _component_class(index, "vae", diffusers, diffusers.AutoencoderKL),
        "scheduler": _component_class(index, "scheduler", diffusers, diffusers.DDPMScheduler),
        "text_encoder": _component_class(index, "text_encoder", transformers, transformers.CLIPTextModel),
        "tokenizer": _component_class(index, "tokenizer", transformers, transformers.AutoTokenizer),
    }
    parts: dict[str, Any] = {}
    for name in needed:
        kwargs: dict[str, Any] = {"subfolder": name, "local_files_only": src.local}
        if name in ("unet", "vae"):
            # Without accelerate, say so explicitly: diffusers would otherwise warn on every load.
            kwargs |= {"torch_dtype": dtype, "low_cpu_mem_usage": _HAS_ACCELERATE}
        try:
            parts[name] = classes[name].from_pretrained(src.location, **kwargs)
        except Exception as exc:
            where = "from the Hugging Face Hub " if not src.local else ""
            raise ModelLoadError(
                f"Could not load the {name} of {src.name} {where}({_reason(exc)}); the files may be "
                "incomplete, so re-download the model or pass another one."
            ) from exc
    if not hasattr(parts["scheduler"], "alphas_cumprod"):
        raise ModelLoadError(
            f"The scheduler of {src.name} has no alphas_cumprod; use a DDPM-style scheduler."
        )

    for name in ("unet", "vae", "text_encoder"):
        if name in parts:
            parts[name].requires_grad_(False)
            parts[name].eval()
    parts["unet"].to(device)
    if is_latent:
        parts["vae"].to(device)
    return Prior(
        name=src.name,
        unet=parts["unet"],
        text_encoder=parts["text_encoder"].to("cpu", torch.float32),
        tokenizer=parts["tokenizer"],
        scheduler=parts["scheduler"],
        vae=parts.get("vae"),
        device=device,
        dtype=dtype,
        recommended=_read_recommended(src),
    )


def _read_recommended(src: _Source) -> dict[str, Any]:
    """`dreamsmith.json` beside model_index.json: settings the model's makers recommend for score
    distillation, e.g. {"t_max": 0.6, "guidance_scale": {"sds": 7.5}}. Keys are settings marked
    `recommended` in the settings table (others are ignored); values are checked against the table (a
    guidance may be one number or one per rule). A local folder only; a file that is not a JSON object of
    valid values is an error, not silently skipped."""
    from backend.config import recommendable
    from backend.engine.rules import RULES
    from backend.settings import check_value

    path = Path(src.location) / "dreamsmith.json"
    if not src.local or not path.is_file():
        return {}
    try:
        data = json.loads(_read_capped(path, MAX_INDEX_BYTES))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{src.name}: dreamsmith.json is not readable JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{src.name}: dreamsmith.json must be a JSON object of recommended settings.")
    out: dict[str, Any] = {}
    for key, setting in recommendable().items():
        value = data.get(key)
        if value is None:
            continue
        per_rule = value if key == "guidance_scale" and isinstance(value, dict) else {"": value}
        for rule, v in per_rule.items():
            where = f"{key}.{rule}" if rule else key
            if rule and rule not in RULES:
                raise ModelLoadError(f"{src.name}: dreamsmith.json {where}: no rule is called {rule!r}.")
            try:
                check_value(setting, v)
            except DreamsmithError as exc:
                raise ModelLoadError(f"{src.name}: dreamsmith.json {where}: {exc}") from exc
        out[key] = {k: float(v) for k, v in value.items()} if "" not in per_rule else float(value)
    return out


class PriorCache:
    """Keeps loaded priors between jobs, least recently used first out.

    Keyed by (location, device) and checked against the content's identity (`_content_key`): a model
    replaced in its folder is loaded again, never served stale. A failed load is not kept: the next
    request tries again (e.g. once the folder is fixed).
    """

    def __init__(self, max_models: int = 2) -> None:
        self.max_models = max(1, max_models)
        self._priors: OrderedDict[tuple[str, str], tuple[tuple[Any, ...], Prior]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: str | None, device: torch.device) -> Prior:
        src = _resolve_source(model)
        key, content = (src.location, str(device)), _content_key(src)
        with self._lock:
            if key in self._priors:
                cached_content, prior = self._priors[key]
                if cached_content == content:
                    self._priors.move_to_end(key)
                    return prior
                del self._priors[key]  # replaced on disk: drop the old weights before loading the new
                _release_memory()
            while len(self._priors) >= self.max_models:  # free memory before loading the next one
                self._priors.popitem(last=False)
                _release_memory()
            prior = load_prior(model, device)
            self._priors[key] = (content, prior)
            return prior

    def loaded(self) -> list[str]:
        """Names of the models held now (for the health endpoint), most recently used last."""
        with self._lock:
            return [prior.name for _, prior in self._priors.values()]

    def clear(self) -> None:
        with self._lock:
            self._priors.clear()
            _release_memory()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
