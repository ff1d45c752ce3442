import os
import sys

# OpenMP's busy-waiting threads slow torch down many times over on a shared CPU; must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from backend.cli import main  # noqa: E402

sys.exit(main())
