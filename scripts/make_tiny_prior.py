"""Write a tiny random diffusers text-to-image model (for tests and smoke runs) to a folder.

python scripts/make_tiny_prior.py DIR [--pixel] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.engine.tiny_prior import make_tiny_prior  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="output folder (created if missing)")
    parser.add_argument("--pixel", action="store_true", help="pixel-space model (no VAE) instead of latent")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    args = parser.parse_args(argv)
    path = make_tiny_prior(args.dir, pixel=args.pixel, seed=args.seed)
    print(f"wrote tiny {'pixel' if args.pixel else 'latent'} prior to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
