"""Field checkpoints: the seam between "optimize a field" and "export a field".

A checkpoint (`field.pt`) holds what rebuilds the optimized geometry anywhere: its spec and weights, the
background, the generation's config (with the model's recommendations filled in) and the steps done;
for an exact resume also the optimizer's, the renderer's and the random generators' states. It is written
atomically (a reader never sees half a file) with `torch.save` and read back with
`torch.load(weights_only=True)`, so loading a checkpoint runs no code from it.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from backend.engine.geometry import Geometry, build_geometry
from backend.errors import DreamsmithError
from backend.fileio import write_bytes_atomic

FORMAT = "dreamsmith-field/1"
FILENAME = "field.pt"


@dataclass
class FieldCheckpoint:
    config: dict[str, Any]  # GenerationConfig.to_dict() of the run (t_max filled in)
    geometry: dict[str, Any]  # Geometry.spec()
    geometry_state: dict[str, torch.Tensor]
    step: int  # optimization steps done
    background: str = "white"
    background_state: dict[str, torch.Tensor] = field(default_factory=dict)
    # For an exact resume (absent in export-only checkpoints):
    optimizer_state: dict[str, Any] | None = None
    renderer_state: dict[str, Any] | None = None
    rng_state: dict[str, torch.Tensor] | None = None

    @property
    def resumable(self) -> bool:
        return self.optimizer_state is not None and self.rng_state is not None

    def build_geometry(self, device: torch.device | str = "cpu") -> Geometry:
        """The geometry with its trained weights, on `device`, in eval mode."""
        geometry = build_geometry(self.geometry, device)
        geometry.load_state_dict(self.geometry_state)
        return geometry.eval()


def save_checkpoint(path: Path | str, checkpoint: FieldCheckpoint) -> Path:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **asdict(checkpoint)}, buf)
    return write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path: Path | str) -> FieldCheckpoint:
    """Read a `field.pt`; DreamsmithError with the path and the reason when it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise DreamsmithError(f"No field checkpoint at {path}: pass a {FILENAME} written by generate.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DreamsmithError(f"{path} is not a readable field checkpoint ({type(exc).__name__}).") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DreamsmithError(f"{path} is not a Dreamsmith field checkpoint (expected format {FORMAT}).")
    del data["format"]
    try:
        return FieldCheckpoint(**data)
    except TypeError as exc:
        raise DreamsmithError(f"{path} is a damaged field checkpoint ({exc}).") from exc
