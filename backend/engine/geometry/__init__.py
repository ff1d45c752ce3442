"""Geometries, found by kind, and the geometry a generation starts from."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from backend.engine.geometry.base import Geometry
from backend.engine.geometry.nerf import FieldConfig, RadianceField
from backend.engine.geometry.sdf import SDFConfig, SDFField
from backend.engine.geometry.triplane import TriplaneConfig, TriplaneField

if TYPE_CHECKING:
    from backend.config import GenerationConfig

GEOMETRIES: dict[str, type[Geometry]] = {
    RadianceField.kind: RadianceField,
    SDFField.kind: SDFField,
    TriplaneField.kind: TriplaneField,
}


def field_config_for(device: torch.device) -> FieldConfig:
    """Instant-NGP's full hash grid on CUDA; a lighter grid on CPU, where its 12M parameters dominate a step."""
    return FieldConfig() if device.type == "cuda" else FieldConfig.small()


def make_geometry(cfg: GenerationConfig, device: torch.device) -> Geometry:
    """The untrained geometry of a generation, `cfg.geometry` (parameters drawn from torch's global RNG)."""
    start, ramp = cfg.grid_levels_start, cfg.grid_levels_ramp
    if cfg.geometry == SDFField.kind:
        sdf = SDFConfig() if device.type == "cuda" else SDFConfig.small()
        sdf = dataclasses.replace(
            sdf, beta_start=cfg.sdf_beta[0], beta_end=cfg.sdf_beta[1], levels_start=start, levels_ramp=ramp
        )
        return SDFField(sdf, device=device)
    if cfg.geometry == TriplaneField.kind:  # what a prompt-amortized generator outputs, here from a sphere
        return TriplaneField(TriplaneConfig(), device=device)
    nerf = dataclasses.replace(
        field_config_for(device),
        levels_start=start,
        levels_ramp=ramp,
        blob_density=cfg.blob_density,
        blob_radius=cfg.blob_radius,
        blob_bias=cfg.blob_bias,
        density_activation=cfg.density_activation,
    )
    field = RadianceField(nerf, device=device)
    field.fit_start()  # a field keeping less than the whole ball as its bias still starts as the ball
    return field


def build_geometry(spec: dict[str, Any], device: torch.device | str = "cpu") -> Geometry:
    """An untrained geometry from `Geometry.spec()` data (load its state_dict next)."""
    kind = spec.get("kind")
    if kind not in GEOMETRIES:
        raise ValueError(f"unknown geometry kind {kind!r}; known: {', '.join(GEOMETRIES)}")
    return GEOMETRIES[kind].from_spec(spec, device)


__all__ = ["GEOMETRIES", "Geometry", "build_geometry", "make_geometry", "field_config_for"]
