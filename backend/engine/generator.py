"""A prompt-amortized generator (ScaleDreamer): one network maps a text embedding to a 3D field.

    e = mean over the prompt's tokens of the prior's text-encoder states        [D]   (pooled embedding)
    planes = decoder(Linear(LayerNorm(e)))                                        [3, C, R, R]
    field = TriplaneField(planes, shared heads)                                   (geometry/triplane.py)

The decoder maps e to three low-resolution feature planes (3 x c0 x r0 x r0) and upsamples them with
per-plane convolutions (grouped, so the planes keep their own weights) to R x R; the MLP heads that read
the planes are shared by every prompt. This is ScaleDreamer's triplane generator scaled down to train on a
CPU: its Triplane-Transformer decodes the same triplane from text tokens with 12 attention layers, its
3DConv-Net decodes a voxel grid with a StyleGAN-style 3D convolution stack.

A trained generator is a folder (diffusers layout): `model_index.json`, `generator/` (config.json,
model.safetensors), the text encoder and tokenizer it was trained with (`text_encoder/`, `tokenizer/`:
a generator reads only its own prior's embeddings), `dreamsmith_generator.json` (the training prompts,
their vocabulary, the prior and method), and a model card `README.md`. `load_generator("demo")` loads the
built-in one (`backend/priors/demo_generator/`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from backend.engine.geometry.triplane import TriplaneConfig, TriplaneField, TriplaneHeads
from backend.errors import ModelLoadError
from backend.fileio import write_bytes_atomic, write_json_atomic

DEMO_GENERATOR_NAME = "demo"
DEMO_GENERATOR_PATH = Path(__file__).resolve().parents[1] / "priors" / "demo_generator"
GENERATOR_CLASS = "DreamsmithTriplaneGenerator"
INFO_FILE = "dreamsmith_generator.json"
FORMAT = "dreamsmith-generator/1"


class GeneratorLoadError(ModelLoadError):
    """A generator folder is missing, or is not one."""


@dataclass
class GeneratorConfig:
    embedding_dim: int  # D, the prior's text-encoder width
    base_resolution: int = 8  # r0: the planes the linear layer makes
    base_channels: int = 32  # c0
    field: TriplaneConfig = dataclasses.field(default_factory=TriplaneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        data = dict(data)
        return cls(field=TriplaneConfig(**data.pop("field", {})), **data)


class TriplaneGenerator(nn.Module):
    """Pooled text embeddings [P, D] -> triplanes [P, 3, C, R, R], and the heads that decode them."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        f = cfg.field
        c0, r0 = cfg.base_channels, cfg.base_resolution
        if f.resolution % r0 or (f.resolution // r0) & (f.resolution // r0 - 1):
            raise ValueError(f"the plane resolution {f.resolution} must be {r0} times a power of two")
        self.cfg = cfg
        self.norm = nn.LayerNorm(cfg.embedding_dim)
        self.to_base = nn.Linear(cfg.embedding_dim, 3 * c0 * r0 * r0)
        layers: list[nn.Module] = []
        ch, res = c0, r0
        while res < f.resolution:  # x2 upsampling + 3x3 convolution per plane (groups=3)
            out = max(f.channels, ch // 2)
            layers += [
                nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
                nn.Conv2d(3 * ch, 3 * out, 3, padding=1, groups=3),
                nn.SiLU(),
            ]
            ch, res = out, res * 2
        layers.append(nn.Conv2d(3 * ch, 3 * f.channels, 1, groups=3))
        self.decoder = nn.Sequential(*layers)
        self.heads = TriplaneHeads(f)

    def planes(self, embeddings: Tensor) -> Tensor:
        """[P, D] -> [P, 3, C, R, R]."""
        cfg = self.cfg
        p = embeddings.shape[0]
        base = self.to_base(self.norm(embeddings)).view(p, 3 * cfg.base_channels, *(cfg.base_resolution,) * 2)
        res = cfg.field.resolution
        return cast(Tensor, self.decoder(base)).view(p, 3, cfg.field.channels, res, res)

    def fields(self, embeddings: Tensor) -> list[TriplaneField]:
        """One field per embedding [P, D], attached to this generator's graph (for training)."""
        return [
            TriplaneField(self.cfg.field, planes=planes, heads=self.heads)
            for planes in self.planes(embeddings)
        ]

    @torch.no_grad()
    def field(self, embedding: Tensor) -> TriplaneField:
        """The field of one embedding [D] as a standalone geometry (its own copy of the planes and heads:
        optimizing it, a Refine, leaves the generator as it is)."""
        device = embedding.device
        planes = self.planes(embedding.view(1, -1))[0]
        return TriplaneField(self.cfg.field, device, planes=planes, heads=copy.deepcopy(self.heads)).eval()


class TextEmbedder:
    """The pooled text embedding a generator is conditioned on: the mean of the text encoder's last hidden
    states over the prompt's tokens (start and end tokens included, padding excluded). CPU, float32."""

    def __init__(self, tokenizer: Any, text_encoder: Any) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.to("cpu", torch.float32).eval()
        self.dim = int(text_encoder.config.hidden_size)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Tensor:
        """prompts -> [P, D]."""
        tok = self.tokenizer
        max_length = tok.model_max_length
        if not max_length or max_length > 100_000:
            max_length = self.text_encoder.config.max_position_embeddings
        ids = tok(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        mask = ids.attention_mask.float()
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        states = self.text_encoder(ids.input_ids, attention_mask=ids.attention_mask if use_mask else None)[0]
        pooled = (states.float() * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return cast(Tensor, pooled)


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt as the vocabulary counts them: lower case letters and digits."""
    return re.findall(r"[a-z0-9]+", prompt.lower())


@dataclass
class GeneratorInfo:
    """What `dreamsmith_generator.json` records about a trained generator."""

    prompts: list[str]  # the training prompts
    held_out: list[str] = field(default_factory=list)  # prompts of the family kept out of training
    prior: str = "demo"
    method: str = "asd"
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vocabulary(self) -> set[str]:
        return {w for p in self.prompts for w in prompt_words(p)}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self), "vocabulary": sorted(self.vocabulary)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class LoadedGenerator:
    name: str  # what the user passed ("demo", a path)
    generator: TriplaneGenerator
    embedder: TextEmbedder
    info: GeneratorInfo

    def unseen_words(self, prompt: str) -> list[str]:
        vocabulary = self.info.vocabulary
        return [w for w in dict.fromkeys(prompt_words(prompt)) if w not in vocabulary]

    def warnings_for(self, prompt: str) -> list[str]:
        """Why this prompt's result may not be what it asks for (empty: a prompt of the training family)."""
        unseen = self.unseen_words(prompt)
        if not unseen:
            return []
        words = ", ".join(repr(w) for w in unseen)
        return [
            f"the prompt is outside the generator's training set (it never saw {words}); the result may not "
            f"match it: use words of its prompts (e.g. {self.info.prompts[0]!r}) or optimize per prompt"
        ]

    def field_for(self, prompt: str, device: torch.device | str = "cpu") -> TriplaneField:
        """prompt -> its field: one text-encoder pass and one generator forward."""
        embedding = self.embedder([prompt])[0].to(device)
        return self.generator.field(embedding)


# ---------------------------------------------------------------------------------------------------------
# Folders


def save_generator(
    folder: Path | str,
    generator: TriplaneGenerator,
    embedder: TextEmbedder,
    info: GeneratorInfo,
    card: str = "",
) -> Path:
    """Write (or update) a generator folder, layout in the module docstring; every file atomically (a
    reader sees the old file or the new one), the text encoder and tokenizer once (they never change)."""
    import transformers
    from safetensors.torch import save as safetensors_bytes

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # "Writing model shards"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("text_encoder", embedder.text_encoder), ("tokenizer", embedder.tokenizer)):
        if (folder / name).is_dir():
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
        try:
            if name == "text_encoder":
                part.save_pretrained(tmp, safe_serialization=True)
            else:
                part.save_pretrained(tmp)
            tmp.rename(folder / name)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    write_json_atomic(folder / "generator" / "config.json", generator.cfg.to_dict())
    write_bytes_atomic(folder / "generator" / "model.safetensors", safetensors_bytes(weights))
    index = {
        "_class_name": GENERATOR_CLASS,
        "generator": ["dreamsmith", "TriplaneGenerator"],
        "text_encoder": ["transformers", type(embedder.text_encoder).__name__],
        "tokenizer": ["transformers", type(embedder.tokenizer).__name__],
    }
    write_json_atomic(folder / INFO_FILE, info.to_dict())
    if card:
        write_bytes_atomic(folder / "README.md", card.encode("utf-8"))
    write_json_atomic(folder / "model_index.json", index)
    return folder


def _not_a_generator(name: str) -> GeneratorLoadError:
    return GeneratorLoadError(
        f"Generator {name} is not a generator folder: pass 'demo' or a folder written by "
        "`python -m backend train-generator` (it holds model_index.json, generator/, text_encoder/, tokenizer/)."
    )


def resolve_generator(name: str) -> Path:
    """'demo' -> the built-in generator's folder; anything else must be an existing generator folder."""
    if name == DEMO_GENERATOR_NAME and not Path(name).exists():
        if not (DEMO_GENERATOR_PATH / "model_index.json").is_file():
            raise GeneratorLoadError(
                f"The built-in demo generator is missing ({DEMO_GENERATOR_PATH}); train one with "
                "`python -m backend train-generator --demo-world --out DIR` and pass DIR."
            )
        return DEMO_GENERATOR_PATH
    path = Path(name).expanduser()
    try:
        ok = (path / "model_index.json").is_file() and (path / "generator" / "config.json").is_file()
    except OSError:
        ok = False
    if not ok:
        raise _not_a_generator(name)
    return path.resolve()


def load_generator(name: str, device: torch.device | str = "cpu") -> LoadedGenerator:
    """Load a generator folder (or 'demo'); GeneratorLoadError with one line when it is not one."""
    import transformers
    from safetensors.torch import load_file

    path = resolve_generator(name)
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a bar per load
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
        if not isinstance(index, dict) or index.get("_class_name") != GENERATOR_CLASS:
            raise _not_a_generator(name)
        cfg = GeneratorConfig.from_dict(json.loads((path / "generator" / "config.json").read_text("utf-8")))
        info = GeneratorInfo.from_dict(json.loads((path / INFO_FILE).read_text(encoding="utf-8")))
        generator = TriplaneGenerator(cfg)
        generator.load_state_dict(load_file(path / "generator" / "model.safetensors"))
        classes = {
            key: getattr(transformers, (index.get(key) or [None, default])[1] or default, None)
            or getattr(transformers, default)
            for key, default in (("text_encoder", "CLIPTextModel"), ("tokenizer", "AutoTokenizer"))
        }
        text_encoder = classes["text_encoder"].from_pretrained(path / "text_encoder", local_files_only=True)
        tokenizer = classes["tokenizer"].from_pretrained(path / "tokenizer", local_files_only=True)
    except GeneratorLoadError:
        raise
    except Exception as exc:  # unreadable JSON, missing or damaged weights
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise GeneratorLoadError(
            f"Could not load generator {name} ({reason}); train it again or pass another folder."
        ) from exc
    embedder = TextEmbedder(tokenizer, text_encoder)
    if embedder.dim != cfg.embedding_dim:
        raise GeneratorLoadError(
            f"Generator {name}: its text encoder is {embedder.dim} wide, its generator expects "
            f"{cfg.embedding_dim}; the folder is inconsistent, train it again."
        )
    return LoadedGenerator(name, generator.to(device).eval(), embedder, info)


class GeneratorCache:
    """Loaded generators by (folder, device), the most recently used kept (they are small)."""

    def __init__(self, max_items: int = 4) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, str, float], LoadedGenerator] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, device: torch.device | str = "cpu") -> LoadedGenerator:
        path = resolve_generator(name)
        mtime = 0.0
        with contextlib.suppress(OSError):  # a folder replaced in place is loaded again
            mtime = (path / "generator" / "model.safetensors").stat().st_mtime
        key = (str(path), str(device), mtime)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            loaded = load_generator(name, device)
            self._items[key] = loaded
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return loaded


GENERATORS = GeneratorCache()


def make_tiny_generator(folder: Path | str, prior: Path | str, prompts: list[str], seed: int = 0) -> Path:
    """An untrained, tiny generator folder over a (tiny) prior's text encoder, for tests: its fields are the
    initial sphere, so every prompt gives a mesh."""
    import transformers

    text_encoder = transformers.CLIPTextModel.from_pretrained(
        Path(prior) / "text_encoder", local_files_only=True
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(prior) / "tokenizer", local_files_only=True)
    embedder = TextEmbedder(tokenizer, text_encoder)
    field = TriplaneConfig(resolution=8, channels=4, hidden_dim=8)
    cfg = GeneratorConfig(embedding_dim=embedder.dim, base_resolution=4, base_channels=8, field=field)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = TriplaneGenerator(cfg)
    return save_generator(folder, generator, embedder, GeneratorInfo(prompts=list(prompts), prior=str(prior)))
