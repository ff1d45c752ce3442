"""What every gradient rule of score distillation shares: the interface, the rule table, and the math.

A gradient rule turns image latents x [B, C, h, w], a timestep t and text embeddings into a gradient on
x, computed with the frozen prior and treated as a constant by autograd; `score_distillation_loss` turns
it into a loss whose derivative with respect to x is grad / B. All rules use
x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps and the weight w(t) = 1 - abar_t (DreamFusion).

A rule is a small object configured by its constructor (as a diffusers scheduler); subclassing
`GradientRule` with a `name` puts it in the table `RULES` (see `backend.engine.rules`), from which the
method list, the CLI, the HTTP schema and the add-on's menu are derived.

The rules take any object with `predict_noise(x_t, t, text_emb)`, `alphas_cumprod` [T] and
`num_train_timesteps` (a `backend.engine.prior.Prior`, or a fake one in tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from backend.config import GenerationConfig


class NoisePredictor(Protocol):
    alphas_cumprod: Tensor  # [T] float32
    num_train_timesteps: int

    def predict_noise(self, x_t: Tensor, t: Tensor, text_emb: Tensor) -> Tensor: ...


class GradientRule:
    """A score distillation gradient: `gradient(prior, x, t, cond, uncond, generator)` -> [B, C, h, w]."""

    name: ClassVar[str]  # the method's rule part ("sds"); set on a subclass, it enters RULES
    title: ClassVar[str]  # menu label ("SDS")
    description: ClassVar[str]  # one line for menus and --help
    default_guidance_scale: ClassVar[float]
    # The uniform schedule's window, annealed [lo, hi] -> [lo', hi'] as fractions of T, when this rule's
    # paper prescribes one (ScaleDreamer for ASD); None: the fixed [t_min, t_max].
    uniform_window: ClassVar[tuple[float, float, float, float] | None] = None
    # How many images one UNet call sees per rendered image (for the benchmarks' accounting).
    unet_batch_factor: ClassVar[int]
    order: ClassVar[int] = 100  # place in menus (the default method's rule first)

    table: ClassVar[dict[str, type[GradientRule]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            GradientRule.table[cls.name] = cls

    def __init__(self, guidance_scale: float) -> None:
        self.guidance_scale = float(guidance_scale)

    @classmethod
    def from_config(cls, cfg: GenerationConfig, t_min: int) -> GradientRule:
        """The rule as `cfg` sets it up (t_min: the run's smallest timestep, an integer)."""
        return cls(guidance_scale=cfg.effective_guidance_scale)

    def gradient(
        self,
        prior: NoisePredictor,
        x: Tensor,
        t: Tensor | int,
        cond: Tensor,
        uncond: Tensor,
        generator: torch.Generator,
    ) -> Tensor:
        """Gradient on x [B, C, h, w]; cond / uncond [B or 1, L, D]; t scalar or [B]."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(guidance_scale={self.guidance_scale:g})"


def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """eps_hat = eps_u + s (eps_c - eps_u)  (Ho & Salimans, classifier-free guidance)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def timesteps(t: Tensor | int, batch: int) -> Tensor:
    """t as a [B] long tensor on the CPU (a scalar is shared by the whole batch)."""
    t = torch.as_tensor(t).detach().to("cpu", torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or hold one timestep per image ({batch}), got {tuple(t.shape)}")
    return t.contiguous()


def abar(prior: NoisePredictor, t: Tensor, like: Tensor) -> Tensor:
    """abar_t as [B, 1, 1, 1] on the device of `like`."""
    return prior.alphas_cumprod[t].to(like.device, torch.float32).view(-1, 1, 1, 1)


def noise_like(x: Tensor, generator: torch.Generator) -> Tensor:
    """eps ~ N(0, I) drawn from `generator` (on its own device, so CPU runs are bit-reproducible)."""
    return torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, torch.float32)


def batch_embeddings(emb: Tensor, batch: int) -> Tensor:
    """[1 or B, L, D] -> [B, L, D]."""
    return emb.expand(batch, -1, -1) if emb.shape[0] == 1 else emb


def add_noise(x: Tensor, eps: Tensor, abar_t: Tensor) -> Tensor:
    """Forward diffusion q(x_t | x): x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps."""
    return abar_t.sqrt() * x + (1 - abar_t).sqrt() * eps


def guided_predictions(
    prior: NoisePredictor, x_t: Tensor, t: Tensor, cond: Tensor, uncond: Tensor
) -> tuple[Tensor, Tensor]:
    """(eps_c, eps_u) from ONE UNet call on [x_t | cond ; x_t | uncond] (2B images)."""
    b = x_t.shape[0]
    eps_pred = prior.predict_noise(
        torch.cat([x_t, x_t]),
        torch.cat([t, t]),
        torch.cat([batch_embeddings(cond, b), batch_embeddings(uncond, b)]),
    ).to(x_t.device, torch.float32)
    eps_cond, eps_uncond = eps_pred.chunk(2)
    return eps_cond, eps_uncond


def score_distillation_loss(x: Tensor, grad: Tensor, clip: float | None = None) -> Tensor:
    """0.5 ||x - stopgrad(x - grad)||^2 / B, whose gradient with respect to x is exactly grad / B.

    Non-finite entries of grad become 0; `clip` bounds each entry to [-clip, clip].
    """
    grad = torch.nan_to_num(grad.detach().to(x.dtype), nan=0.0, posinf=0.0, neginf=0.0)
    if clip is not None:
        grad = grad.clamp(-clip, clip)
    target = (x - grad).detach()
    return 0.5 * ((x - target) ** 2).sum() / x.shape[0]
