"""The rule and method tables, classifier-free guidance and the distillation loss shared by every rule."""

from __future__ import annotations

import torch
from fake_prior import B, latents

from backend.engine.rules.base import classifier_free_guidance, score_distillation_loss


def test_classifier_free_guidance_formula() -> None:
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    assert torch.allclose(classifier_free_guidance(u, c, 7.5), u + 7.5 * (c - u))
    assert torch.allclose(classifier_free_guidance(u, c, 1.0), c)
    assert torch.allclose(classifier_free_guidance(u, c, 0.0), u)


def test_loss_carries_grad_into_parameters() -> None:
    x = torch.nn.Parameter(latents(1))
    grad = latents(2)
    loss = score_distillation_loss(x, grad)
    loss.backward()
    assert torch.allclose(x.grad, grad / B, atol=1e-6)
    assert torch.isclose(loss, 0.5 * (grad**2).sum() / B)


def test_loss_through_a_function_of_parameters() -> None:
    w = torch.nn.Parameter(torch.tensor(2.0))
    base = latents(1)
    grad = latents(2)
    score_distillation_loss(w * base, grad).backward()
    assert torch.isclose(w.grad, (grad * base).sum() / B, atol=1e-4)


def test_loss_replaces_non_finite_values_and_clips() -> None:
    x = torch.nn.Parameter(torch.zeros(2, 1, 1, 3))
    grad = torch.tensor([[[[float("nan"), float("inf"), 5.0]]], [[[-float("inf"), -5.0, 0.5]]]])
    score_distillation_loss(x, grad, clip=1.0).backward()
    expected = torch.tensor([[[[0.0, 0.0, 1.0]]], [[[0.0, -1.0, 0.5]]]]) / 2
    assert torch.equal(x.grad, expected)


def test_rule_table_holds_every_rule_file() -> None:
    from backend.engine.rules import RULES

    assert set(RULES) >= {"sds", "asd", "csd"}
    for rule in RULES.values():
        assert rule.title and rule.description and rule.default_guidance_scale > 0


def test_methods_pair_every_schedule_with_every_rule() -> None:
    from backend.engine.methods import METHODS
    from backend.engine.rules import RULES
    from backend.engine.schedules import SCHEDULES

    assert len(METHODS) == len(RULES) * len(SCHEDULES)
    assert {"sds", "tp-sds", "asd", "tp-asd", "csd", "tp-csd"} <= set(METHODS)
    assert list(METHODS)[0] == "tp-sds"  # the default first in menus
    assert METHODS["tp-csd"].schedule.name == "prioritized" and METHODS["tp-csd"].rule.name == "csd"
    info = METHODS["asd"].info()
    assert info["guidance_scale"] == 7.5 and "sliding" in str(info["description"])


def test_a_new_rule_class_enters_the_table() -> None:
    """What makes "one new file" enough: defining a named subclass registers it."""
    from backend.engine.rules.base import GradientRule

    class Probe(GradientRule):
        name = "probe-rule"
        title = "Probe"
        description = "test only"
        default_guidance_scale = 1.0
        unet_batch_factor = 1

    try:
        assert GradientRule.table["probe-rule"] is Probe
    finally:
        del GradientRule.table["probe-rule"]
