"""Validation of generation settings: every bad value is refused with the field's name."""

from __future__ import annotations

import pytest

from backend.config import GenerationConfig, config_from_dict
from backend.errors import InvalidConfig


def test_defaults_are_valid_and_method_defaults_apply():
    cfg = GenerationConfig(prompt="a red cube").validate()
    assert cfg.method == "tp-sds"
    assert cfg.effective_guidance_scale == 100.0
    assert GenerationConfig(prompt="x", method="asd").effective_guidance_scale == 7.5
    assert GenerationConfig(prompt="x", method="tp-asd", guidance_scale=0).effective_guidance_scale == 7.5
    assert GenerationConfig(prompt="x", method="asd", guidance_scale=12.0).effective_guidance_scale == 12.0
    assert GenerationConfig(prompt="x", method="tp-asd").schedule_kind == "prioritized"
    assert GenerationConfig(prompt="x", method="sds").schedule_kind == "uniform"


@pytest.mark.parametrize(
    "data, field",
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 501}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "a", "method": "nope"}, "method"),
        ({"prompt": "a", "steps": 0}, "steps"),
        ({"prompt": "a", "steps": 1.5}, "steps"),
        ({"prompt": "a", "steps": True}, "steps"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt": "a", "guidance_scale": float("nan")}, "guidance_scale"),
        ({"prompt": "a", "render_size": 8}, "render_size"),
        ({"prompt": "a", "camera": {"elevation_deg": [30, 10]}}, "camera.elevation_deg"),
        ({"prompt": "a", "camera": {"fov_deg": [40]}}, "camera.fov_deg"),
        ({"prompt": "a", "camera": {"zoom": 2}}, "camera.zoom"),
        ({"prompt": "a", "camera": 3}, "camera"),
        ({"prompt": "a", "export": {"texture": "ptex"}}, "export.texture"),
        ({"prompt": "a", "export": {"target_faces": 10}}, "export.target_faces"),
        ({"prompt": "a", "export": {"smoothing": -1}}, "export.smoothing"),
        ({"prompt": "a", "export": {"smoothing": 5.0}}, "export.smoothing"),
        ({"prompt": "a", "t_max": 0.01}, "t_min"),
        ({"prompt": "a", "t_max": "high"}, "t_max"),
        ({"prompt": "a", "lr_grid": -1}, "lr_grid"),
        ({"prompt": "a", "samples_per_ray": 2}, "samples_per_ray"),
        ({"prompt": "a", "shading_probs": [0, 0, 0]}, "shading_probs"),
        ({"prompt": "a", "shading_probs": [0.5, 0.5]}, "shading_probs"),
        ({"prompt": "a", "background": "pink"}, "background"),
        ({"prompt": "a", "tp_use_wd": 1}, "tp_use_wd"),
        ({"prompt": "a", "colour": "red"}, "colour"),
        ({"prompt": "a", "model": ""}, "model"),
    ],
)
def test_bad_values_name_the_field(data, field):
    with pytest.raises(InvalidConfig) as info:
        config_from_dict(data)
    assert info.value.field == field
    assert field in str(info.value)


def test_round_trip_through_plain_data():
    cfg = config_from_dict(
        {
            "prompt": "a blue torus",
            "method": "asd",
            "camera": {"fov_deg": [30, 40]},
            "export": {"texture": "uv"},
        }
    )
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.camera.fov_deg == (30, 40) and cfg.export.texture == "uv"
