"""Training a prompt-amortized generator by score distillation (ScaleDreamer, section 4 and its
`multiprompt_radience_field_generator` system).

Each step, every process draws `prompts_per_step` prompts from its own shard of the prompt list (process r
of W holds prompts[r::W], as ScaleDreamer's data module does), decodes their fields with one generator
forward, renders each from its own random camera (the engine's cameras, shading, light, background and
renderer, as a per-prompt run), and asks the frozen prior for the gradient of all the renders in ONE call
of the method's rule, each render with its own timestep and its prompt's cached view-dependent embedding.
The loss adds the per-prompt regularizers (orientation, sparsity, the triplane's eikonal term) averaged over
the prompts. With several processes (`torchrun`), the gradients are averaged across them before every Adam
step (DistributedDataParallel's all-reduce, written out: the generator is called once per prompt inside the
renderer, which DDP's forward hooks do not see), so every process holds the same weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
import torch.distributed as dist
from torch import Tensor

from backend.config import GenerationConfig, with_recommendations
from backend.engine.background import make_background
from backend.engine.cameras import sample_cameras
from backend.engine.generator import GeneratorConfig, TextEmbedder, TriplaneGenerator
from backend.engine.methods import METHODS
from backend.engine.optimize import RenderedBatch, StepTimer, Supervision, decay_learning_rates, to_cpu
from backend.engine.prior import Prior, PromptEmbeddings
from backend.engine.regularizers import add_regularizers
from backend.engine.rendering import DenseRenderer, sample_light, sample_shading
from backend.engine.rules import score_distillation_loss
from backend.engine.schedules import timestep_bounds
from backend.errors import DreamsmithError, NonFiniteLoss

# ---------------------------------------------------------------------------------------------------------
# Processes


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one, or `torchrun --nproc_per_node N`)."""

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, prompts: list[str]) -> list[str]:
        """This process's prompts: prompts[rank::world]."""
        return prompts[self.rank :: self.world]


def init_processes(device: torch.device) -> Processes:
    """Join the process group `torchrun` describes in the environment (gloo on CPU, NCCL on CUDA); a
    single process when there is none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size())


def average_gradients(params: Sequence[Tensor], procs: Processes) -> None:
    """Replace each gradient by its mean over the processes (one all-reduce of a flat buffer)."""
    if not procs.distributed:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= procs.world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def broadcast_parameters(module: torch.nn.Module, procs: Processes) -> None:
    """Every process starts from process 0's weights."""
    if procs.distributed:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, 0)


def mean_over_processes(value: float, procs: Processes) -> float:
    if not procs.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / procs.world


# ---------------------------------------------------------------------------------------------------------
# Supervision of several prompts at once


class AmortizedSupervision(Protocol):
    """What the renders of one step's prompts should look like, as one loss."""

    def timestep(self, step: int, total: int, generator: torch.Generator) -> int | None: ...

    def loss(
        self,
        batches: list[RenderedBatch],
        prompts: list[str],
        ts: list[int | None],
        generator: torch.Generator,
        timer: StepTimer,
    ) -> Tensor: ...


class BatchedScoreDistillation:
    """The prior's supervision of many prompts: one rule call over every prompt's renders, each with its
    own timestep and its prompt's view-dependent embedding (encoded once, up front)."""

    def __init__(self, cfg: GenerationConfig, prior: Prior, prompts: list[str]) -> None:
        self.prior = prior
        self.grad_clip = cfg.grad_clip
        self.embeddings: dict[str, PromptEmbeddings] = {
            p: prior.encode_prompts(p, cfg.negative_prompt) for p in dict.fromkeys(prompts)
        }
        method = METHODS[cfg.method]
        t_min, _ = timestep_bounds(cfg, prior.num_train_timesteps)
        self.rule = method.make_rule(cfg, t_min)
        self.schedule = method.make_schedule(cfg, prior.alphas_cumprod)

    def timestep(self, step: int, total: int, generator: torch.Generator) -> int:
        return self.schedule(step, total, generator)

    def loss(
        self,
        batches: list[RenderedBatch],
        prompts: list[str],
        ts: list[int | None],
        generator: torch.Generator,
        timer: StepTimer,
    ) -> Tensor:
        prior = self.prior
        with timer("encode"):
            x = torch.cat([prior.to_model_space(b.out.rgb.permute(0, 3, 1, 2)) for b in batches])
        cond = torch.cat(
            [self.embeddings[p].for_views(b.cameras.views) for p, b in zip(prompts, batches, strict=True)]
        ).to(prior.device)
        uncond = self.embeddings[prompts[0]].uncond.to(prior.device).expand_as(cond)
        t = torch.tensor(
            [t for b, t in zip(batches, ts, strict=True) for _ in range(len(b.cameras.views))],
            dtype=torch.long,
        )
        with timer("guidance"):
            grad = self.rule.gradient(prior, x, t, cond, uncond, generator)
        return score_distillation_loss(x, grad, self.grad_clip)


class PerPromptSupervision:
    """A `Supervision` per prompt (e.g. the world's exact renders, `PhotometricTruth`: the generator's
    ceiling), the mean of their losses."""

    def __init__(self, supervisions: dict[str, Supervision]) -> None:
        self.supervisions = supervisions

    def timestep(self, step: int, total: int, generator: torch.Generator) -> int | None:
        return None

    def loss(
        self,
        batches: list[RenderedBatch],
        prompts: list[str],
        ts: list[int | None],
        generator: torch.Generator,
        timer: StepTimer,
    ) -> Tensor:
        losses = [
            self.supervisions[p].loss(b, t, generator, timer)
            for p, b, t in zip(prompts, batches, ts, strict=True)
        ]
        return cast(Tensor, sum(losses)) / len(losses)


# ---------------------------------------------------------------------------------------------------------
# The run


@dataclass
class AmortizedStats:
    loss: float  # this process's loss (the mean over the processes: `AmortizedRun.step` averages it)
    prompts: list[str]
    ts: list[int | None]


class AmortizedRun:
    """A generator under training on a list of prompts (this process's shard of them).

    cfg: the generation settings the parts come from (method, cameras, shading, regularizer weights,
    render size, samples per ray, background, seed); cfg.steps is the training's length (the timestep
    schedules' progress); `lr` is the generator's Adam learning rate, and `lr_decay` the fraction of it
    left at the last step (decayed exponentially with the step, as a per-prompt run's `lr_decay`).
    """

    def __init__(
        self,
        cfg: GenerationConfig,
        generator_cfg: GeneratorConfig,
        prompts: list[str],
        embedder: TextEmbedder,
        prior: Prior | None,
        device: torch.device,
        *,
        prompts_per_step: int = 8,
        lr: float = 2e-3,
        lr_decay: float = 1.0,
        procs: Processes | None = None,
        supervision: AmortizedSupervision | None = None,
        timer: StepTimer | None = None,
    ) -> None:
        # The model's recommendations for what the config leaves unset, as a per-prompt run takes them.
        cfg = with_recommendations(cfg, prior.recommended if prior is not None else {})
        self.cfg = cfg
        self.procs = procs or Processes()
        self.prompts = self.procs.shard(list(prompts))
        if not self.prompts:
            raise DreamsmithError(
                f"{len(prompts)} prompts cannot be shared among {self.procs.world} processes: "
                "use fewer processes than prompts"
            )
        self.prompts_per_step = max(1, prompts_per_step // self.procs.world)
        self.device = device
        self.timer = timer or StepTimer()
        if supervision is None:
            if prior is None:
                raise ValueError("score distillation needs a prior")
            supervision = BatchedScoreDistillation(cfg, prior, self.prompts)
        self.supervision = supervision
        self.embedder = embedder
        self.pooled = {p: e for p, e in zip(self.prompts, embedder(self.prompts).to(device), strict=True)}
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        self.generator = TriplaneGenerator(generator_cfg).to(device)
        broadcast_parameters(self.generator, self.procs)
        self.background = make_background(cfg.background).to(device)
        # No empty-space grid: it would belong to one field, and each step renders several.
        self.renderer = DenseRenderer(samples_per_ray=cfg.samples_per_ray, ambient=cfg.ambient)
        seed = cfg.seed + 7919 * self.procs.rank  # each process draws its own prompts, cameras and noise
        self.host_rng = torch.Generator().manual_seed(seed)
        self.device_rng = torch.Generator(device=device).manual_seed(seed + 1)
        params = [*self.generator.parameters(), *self.background.parameters()]
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99), eps=1e-15)
        self.start_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.lr_decay = lr_decay
        self.steps_done = 0

    def draw_prompts(self) -> list[str]:
        """This step's prompts: drawn without replacement from the shard (with replacement when the shard
        is smaller than a step)."""
        n, k = len(self.prompts), self.prompts_per_step
        if n >= k:
            idx = torch.randperm(n, generator=self.host_rng)[:k].tolist()
        else:
            idx = torch.randint(n, (k,), generator=self.host_rng).tolist()
        return [self.prompts[i] for i in idx]

    def step(self, i: int | None = None) -> AmortizedStats:
        cfg, timer = self.cfg, self.timer
        i = self.steps_done if i is None else i
        prompts = self.draw_prompts()
        fields = self.generator.fields(torch.stack([self.pooled[p] for p in prompts]))
        batches: list[RenderedBatch] = []
        ts: list[int | None] = []
        regularizers = torch.zeros((), device=self.device)
        for field in fields:
            ts.append(self.supervision.timestep(i, cfg.steps, self.host_rng))
            cams = sample_cameras(cfg.camera, cfg.batch_size, cfg.render_size, self.host_rng, self.device)
            shading = sample_shading(i, cfg, self.host_rng)
            light = sample_light(cams, self.host_rng)
            bg = self.background(cams.rays_d, self.device_rng)
            with timer("render"):
                out = self.renderer.render(
                    field, cams.rays_o, cams.rays_d, shading, light, bg, self.device_rng
                )
            batches.append(RenderedBatch(cams, shading, light, bg, out))
            regularizers = add_regularizers(regularizers, cfg, out, field, self.device_rng)
        loss = self.supervision.loss(batches, prompts, ts, self.device_rng, timer) + regularizers / len(
            fields
        )
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"the loss became {loss.item()} at step {i}: lower the learning rate or the guidance scale"
            )
        with timer("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(self.params, self.procs)
        with timer("optimizer"):
            decay_learning_rates(self.optimizer, self.start_lrs, self.lr_decay, i, cfg.steps)
            self.optimizer.step()
        self.steps_done = i + 1
        return AmortizedStats(loss=float(loss.detach()), prompts=prompts, ts=ts)

    # ---- checkpoints ------------------------------------------------------------------------------------

    def rng_state(self) -> dict[str, Tensor]:
        return {"host": self.host_rng.get_state(), "device": self.device_rng.get_state().cpu()}

    def state(self, rng_states: list[dict[str, Tensor]]) -> dict[str, Any]:
        """What resumes the run exactly (rng_states: every process's, in rank order)."""
        return {
            "step": self.steps_done,
            "generator_config": self.generator.cfg.to_dict(),
            "generator": {k: v.detach().cpu() for k, v in self.generator.state_dict().items()},
            "background": {k: v.detach().cpu() for k, v in self.background.state_dict().items()},
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "rng": rng_states,
        }

    def restore(self, state: dict[str, Any]) -> None:
        rngs = state["rng"]
        if len(rngs) != self.procs.world:
            raise DreamsmithError(
                f"the saved training ran in {len(rngs)} process(es); resume it with the same number "
                f"(now {self.procs.world})"
            )
        self.generator.load_state_dict(state["generator"])
        self.background.load_state_dict(state["background"])
        self.optimizer.load_state_dict(state["optimizer"])
        mine = rngs[self.procs.rank]
        self.host_rng.set_state(mine["host"])
        self.device_rng.set_state(mine["device"])
        self.steps_done = int(state["step"])


def gather_rng_states(run: AmortizedRun) -> list[dict[str, Tensor]]:
    """Every process's RNG states, in rank order (a collective: every process calls it)."""
    mine = run.rng_state()
    if not run.procs.distributed:
        return [mine]
    out: list[Any] = [None] * run.procs.world
    dist.all_gather_object(out, mine)
    return cast(list[dict[str, Tensor]], out)


OnStep = Callable[[int, AmortizedStats], None]
