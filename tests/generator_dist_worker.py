"""One process of the 2-process generator training test (launched by torchrun from test_generator.py).

    python -m torch.distributed.run --nproc_per_node 2 tests/generator_dist_worker.py PRIOR OUT STEPS

Every process trains the same generator on its shard of the prompts for STEPS steps and saves its weights
and the prompts it drew to OUT/rank<r>.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from backend.config import GenerationConfig  # noqa: E402
from backend.engine.amortized import AmortizedRun, init_processes  # noqa: E402
from backend.engine.generator import GeneratorConfig, TextEmbedder  # noqa: E402
from backend.engine.geometry.triplane import TriplaneConfig  # noqa: E402
from backend.engine.prior import load_prior  # noqa: E402

PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a red sphere"]


def main() -> int:
    prior_path, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    device = torch.device("cpu")
    procs = init_processes(device)
    prior = load_prior(prior_path, device)
    embedder = TextEmbedder(prior.tokenizer, prior.text_encoder)
    cfg = GenerationConfig(prompt=PROMPTS[0], model=prior_path, method="asd", steps=steps, render_size=16)
    gen_cfg = GeneratorConfig(
        embedding_dim=embedder.dim,
        base_resolution=4,
        base_channels=8,
        field=TriplaneConfig(resolution=8, channels=4),
    )
    run = AmortizedRun(cfg, gen_cfg, PROMPTS, embedder, prior, device, prompts_per_step=2, procs=procs)
    drawn = []
    for i in range(steps):
        drawn += run.step(i).prompts
    weights = {k: v.detach().clone() for k, v in run.generator.state_dict().items()}
    torch.save(
        {"weights": weights, "drawn": drawn, "shard": run.prompts, "world": procs.world},
        out / f"rank{procs.rank}.pt",
    )
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
