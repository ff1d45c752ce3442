"""The render regularizers: opacity entropy and normal smoothness (backend/engine/regularizers.py)."""

from __future__ import annotations

import torch

from backend.engine.regularizers import normal_smoothness, opacity_entropy


def image(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).view(1, 1, len(values), 1)


def test_opacity_entropy_is_least_for_opaque_or_empty_pixels_and_pushes_fog_apart() -> None:
    assert float(opacity_entropy(image([0.0, 1.0]))) < 0.01
    assert float(opacity_entropy(image([0.5]))) > float(opacity_entropy(image([0.9]))) > 0.3
    fog = image([0.4, 0.6]).requires_grad_(True)
    opacity_entropy(fog).backward()
    assert fog.grad is not None
    down, up = fog.grad.flatten().tolist()
    assert down > 0 > up  # descent lowers 0.4 and raises 0.6


def test_normal_smoothness_sees_bumps_not_flat_surfaces_or_silhouettes() -> None:
    up = torch.tensor([0.0, 0.0, 1.0])
    opacity = torch.ones(1, 4, 4, 1)
    flat = up.expand(1, 4, 4, 3).clone()
    assert float(normal_smoothness(flat, opacity)) == 0.0
    bumpy = flat.clone()
    bumpy[0, 1, 2] = torch.tensor([0.6, 0.0, 0.8])
    assert float(normal_smoothness(bumpy, opacity)) > 0.01
    # Half the image empty: the edge between object and background costs nothing.
    half = opacity.clone()
    half[:, :, 2:] = 0.0
    assert float(normal_smoothness(flat * half, half)) == 0.0
    # The gradient flows into the normals, not into the opacity weights.
    normals = bumpy.clone().requires_grad_(True)
    weights = opacity.clone().requires_grad_(True)
    normal_smoothness(normals * weights, weights).backward()
    assert normals.grad is not None and float(normals.grad.abs().sum()) > 0
