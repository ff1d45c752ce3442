"""`python -m backend ...`, and the `dreamsmith` command that `pip install .` puts on the PATH."""

import os
import sys


def run() -> None:
    # OpenMP's busy-waiting threads slow torch down many times over on a shared CPU; set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from backend.cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
