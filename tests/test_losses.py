"""Objectives in one process: values against hand-written references, checks and registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from maskkit.losses import BYOLObjective, CLIPObjective, MLPHead, SimCLRObjective, byol_loss, clip_loss, nt_xent_loss
from maskkit.losses.distributed import gather_no_grad, gather_with_grad, get_rank, get_world_size, is_distributed
from maskkit.registry import build_objective, list_objectives


def unit_rows(batch: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)


def reference_infonce(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    logits = scale * image @ text.T
    targets = torch.arange(image.shape[0])
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def reference_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Direct O(B^2) NT-Xent: anchor i of 2B, positive i +/- B, all other j != i in the denominator."""
    z = F.normalize(torch.cat([z_a, z_b]), dim=-1)
    count = z.shape[0]
    batch = count // 2
    total = 0.0
    for i in range(count):
        positive = (i + batch) % count
        logits = [float(z[i] @ z[j]) / temperature for j in range(count) if j != i]
        log_denominator = math.log(sum(math.exp(value) for value in logits))
        total += log_denominator - float(z[i] @ z[positive]) / temperature
    return torch.tensor(total / count)


# --- distributed helpers without a process group ---------------------------------------------


def test_distributed_helpers_single_process():
    assert not is_distributed()
    assert get_rank() == 0
    assert get_world_size() == 1
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
    assert gather_no_grad(x) is x
    assert not gather_no_grad(x, keep_local_grad=False).requires_grad


# --- clip ------------------------------------------------------------------------------------


def test_clip_loss_matches_cross_entropy():
    image, text = unit_rows(6, 8, 0), unit_rows(6, 8, 1)
    expected = reference_infonce(image, text, 14.0)
    torch.testing.assert_close(clip_loss(image, text, torch.tensor(14.0)), expected)
    torch.testing.assert_close(clip_loss(image, text, torch.tensor(14.0), local_loss=True), expected)


def test_clip_objective_weights_views():
    text = unit_rows(5, 8, 0)
    view1, view2 = unit_rows(5, 8, 1), unit_rows(5, 8, 2)
    objective = CLIPObjective(views={"view1": 0.5, "view2": 0.25})
    outputs = {"image_features": {"view1": view1, "view2": view2}, "text_features": text,
               "logit_scale": torch.tensor(10.0)}
    result = objective(outputs)
    expected = 0.5 * reference_infonce(view1, text, 10.0) + 0.25 * reference_infonce(view2, text, 10.0)
    assert list(result) == ["loss_clip"]
    torch.testing.assert_close(result["loss_clip"], expected)
    assert objective.required_views() == ("view1", "view2")


def test_clip_aligned_pairs_lower_loss():
    text = unit_rows(8, 16, 0)
    scale = torch.tensor(20.0)
    aligned = clip_loss(text.clone(), text, scale)
    shuffled = clip_loss(text[torch.randperm(8, generator=torch.Generator().manual_seed(0))], text, scale)
    random = clip_loss(unit_rows(8, 16, 5), text, scale)
    assert aligned < random
    assert aligned < shuffled


def test_clip_gradient_reaches_logit_scale():
    raw_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    image = unit_rows(4, 8, 0).requires_grad_()
    loss = CLIPObjective()({"image_features": {"view1": image}, "text_features": unit_rows(4, 8, 1),
                            "logit_scale": raw_scale.exp()})["loss_clip"]
    loss.backward()
    assert raw_scale.grad is not None and raw_scale.grad != 0
    assert image.grad is not None


@given(batch=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_clip_loss_invariant_to_joint_permutation(batch, seed):
    image, text = unit_rows(batch, 8, seed), unit_rows(batch, 8, seed + 1)
    order = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    scale = torch.tensor(7.0)
    loss = clip_loss(image, text, scale)
    assert loss >= 0
    torch.testing.assert_close(clip_loss(image[order], text[order], scale), loss)


def test_clip_missing_view_named():
    objective = CLIPObjective(views={"view1": 0.5, "view2": 0.5})
    outputs = {"image_features": {"view1": unit_rows(2, 4, 0)}, "text_features": unit_rows(2, 4, 1),
               "logit_scale": torch.tensor(1.0)}
    with pytest.raises(KeyError, match=r"\['view2'\].*Views present: \['view1'\]"):
        objective(outputs)


def test_clip_missing_key_named():
    outputs = {"image_features": {"view1": unit_rows(2, 4, 0)}, "logit_scale": torch.tensor(1.0)}
    with pytest.raises(KeyError, match=r"outputs\['text_features'\], which is missing"):
        CLIPObjective()(outputs)


def test_clip_shape_mismatch_rejected():
    outputs = {"image_features": {"view1": unit_rows(3, 4, 0)}, "text_features": unit_rows(2, 4, 1),
               "logit_scale": torch.tensor(1.0)}
    with pytest.raises(ValueError, match="view 'view1'"):
        CLIPObjective()(outputs)


@pytest.mark.parametrize("views", [{}, {"view1": -1.0}, {"view1": float("nan")}, ["view1"], {"": 1.0}])
def test_clip_invalid_views_rejected(views):
    with pytest.raises(ValueError, match="view"):
        CLIPObjective(views=views)


# --- simclr ----------------------------------------------------------------------------------


def test_nt_xent_matches_loop_reference():
    z_a, z_b = torch.randn(5, 6, generator=torch.Generator().manual_seed(0)), torch.randn(5, 6)
    loss, _ = nt_xent_loss(z_a, z_b, temperature=0.1)
    torch.testing.assert_close(loss, reference_nt_xent(z_a, z_b, 0.1), rtol=1e-5, atol=1e-5)


@given(batch=st.integers(1, 7), temperature=st.floats(0.05, 2.0), seed=st.integers(0, 10_000))
def test_nt_xent_loop_reference_property(batch, temperature, seed):
    generator = torch.Generator().manual_seed(seed)
    z_a, z_b = torch.randn(batch, 4, generator=generator), torch.randn(batch, 4, generator=generator)
    loss, accuracy = nt_xent_loss(z_a, z_b, temperature)
    torch.testing.assert_close(loss, reference_nt_xent(z_a, z_b, temperature), rtol=1e-4, atol=1e-4)
    swapped, _ = nt_xent_loss(z_b, z_a, temperature)
    torch.testing.assert_close(swapped, loss)
    assert 0 <= float(accuracy) <= 1


def test_nt_xent_never_compares_view_with_itself():
    # If the anchor were compared with itself, that logit would tie with the
    # positive. With the mask, orthogonal rows give a near-zero loss.
    z = torch.eye(4)
    loss, accuracy = nt_xent_loss(z, z, temperature=0.05)
    assert float(loss) < 1e-6
    assert float(accuracy) == 1.0


def test_nt_xent_aligned_views_lower_loss():
    z_a = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    aligned, _ = nt_xent_loss(z_a, z_a + 0.01 * noise, 0.1)
    unrelated, _ = nt_xent_loss(z_a, noise, 0.1)
    assert aligned < unrelated


@pytest.mark.parametrize("norm, norm_type", [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)])
def test_simclr_objective_applies_head_and_weight(norm, norm_type):
    torch.manual_seed(0)
    objective = SimCLRObjective(in_dim=12, hidden_dim=16, out_dim=8, norm=norm, temperature=0.2, weight=0.5)
    assert [type(m) for m in objective.head if not isinstance(m, (nn.Linear, nn.ReLU))] == [norm_type] * 2
    assert [m.out_features for m in objective.head if isinstance(m, nn.Linear)] == [16, 16, 8]
    pooled = {"view1": torch.randn(6, 12), "view2": torch.randn(6, 12), "view3": torch.randn(6, 12)}
    result = objective({"pooled": pooled})
    expected, expected_accuracy = nt_xent_loss(objective.head(pooled["view1"]), objective.head(pooled["view2"]), 0.2)
    assert set(result) == {"loss_simclr", "simclr_acc"}
    torch.testing.assert_close(result["loss_simclr"], 0.5 * expected)
    torch.testing.assert_close(result["simclr_acc"], expected_accuracy)
    assert not result["simclr_acc"].requires_grad
    result["loss_simclr"].backward()
    assert all(parameter.grad is not None for parameter in objective.parameters())


def test_simclr_missing_pooled_view_named():
    objective = SimCLRObjective(views=("view1", "view3"), in_dim=4, hidden_dim=8, out_dim=4)
    with pytest.raises(KeyError, match=r"\['view3'\]"):
        objective({"pooled": {"view1": torch.randn(2, 4), "view2": torch.randn(2, 4)}})
    with pytest.raises(KeyError, match=r"outputs\['pooled'\]"):
        objective({"image_features": {}})


@pytest.mark.parametrize("options, message", [
    (dict(), "in_dim"),
    (dict(in_dim=4, norm="group"), "norm"),
    (dict(in_dim=4, temperature=0.0), "temperature"),
    (dict(in_dim=4, weight=-1.0), "weight"),
    (dict(in_dim=4, views=("view1",)), "views"),
    (dict(in_dim=4, views=("view1", "view1")), "views"),
    (dict(in_dim=4, hidden_dim=0), "hidden_dim"),
])
def test_simclr_invalid_options_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        SimCLRObjective(**options)


# --- byol ------------------------------------------------------------------------------------


def test_byol_loss_equals_two_minus_two_cosine():
    prediction = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    target = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [3.0, 0.0]])
    torch.testing.assert_close(byol_loss(prediction, target), torch.tensor((0.0 + 4.0 + 2.0) / 3))


def test_byol_objective_matches_manual_and_detaches_target():
    torch.manual_seed(0)
    objective = BYOLObjective(in_dim=10, hidden_dim=12, out_dim=6, weight=2.0, norm="layer")
    pooled = {"view1": torch.randn(4, 10), "view2": torch.randn(4, 10)}
    target = torch.randn(4, 6, requires_grad=True)
    result = objective({"pooled": pooled, "teacher_outputs": {"byol_projector": target}})

    expected = 0.0
    for view in ("view1", "view2"):
        prediction = objective.predictor(objective.projector(pooled[view]))
        expected = expected + (2 - 2 * F.cosine_similarity(prediction, target, dim=-1)).mean()
    assert list(result) == ["loss_byol"]
    torch.testing.assert_close(result["loss_byol"], 2.0 * expected / 2)

    result["loss_byol"].backward()
    assert target.grad is None
    assert objective.projector[0].weight.grad is not None


def test_byol_heads_shapes_and_ema_heads():
    objective = BYOLObjective(in_dim=768, hidden_dim=64, out_dim=32)
    assert [m.out_features for m in objective.projector if isinstance(m, nn.Linear)] == [64, 32]
    assert [m.in_features for m in objective.predictor if isinstance(m, nn.Linear)] == [32, 64]
    assert isinstance(objective.projector[1], nn.BatchNorm1d)
    heads = objective.ema_heads()
    assert list(heads) == ["byol_projector"]
    assert heads["byol_projector"] is objective.projector


def test_byol_aligned_predictions_lower_loss():
    target = torch.randn(8, 6)
    assert byol_loss(target * 3.0, target) < 1e-6
    assert byol_loss(torch.randn(8, 6), target) > 0.5


def test_byol_missing_teacher_target_named():
    objective = BYOLObjective(in_dim=4, hidden_dim=8, out_dim=4, norm="layer")
    pooled = {"view1": torch.randn(2, 4), "view2": torch.randn(2, 4)}
    with pytest.raises(KeyError, match=r"outputs\['teacher_outputs'\]"):
        objective({"pooled": pooled})
    with pytest.raises(KeyError, match=r"'byol_projector'.*Teacher heads present: \['other'\]"):
        objective({"pooled": pooled, "teacher_outputs": {"other": torch.randn(2, 4)}})


# --- heads and registry ----------------------------------------------------------------------


def test_mlp_head_layout():
    head = MLPHead(8, 16, 4, num_layers=3, norm="batch")
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert head(torch.randn(5, 8)).shape == (5, 4)
    assert [type(m) for m in MLPHead(8, 16, 4, num_layers=1)] == [nn.Linear]


def test_registry_builds_objectives():
    assert {"clip", "simclr", "byol"} <= set(list_objectives())
    assert isinstance(build_objective("clip"), CLIPObjective)
    simclr = build_objective({"type": "simclr", "in_dim": 8, "hidden_dim": 16, "out_dim": 4, "norm": "layer"})
    assert isinstance(simclr, SimCLRObjective)
    byol = build_objective("byol", in_dim=8, hidden_dim=16, out_dim=4)
    assert isinstance(byol, BYOLObjective)
    clip = build_objective({"type": "clip", "views": {"view1": 0.5, "view2": 0.5}, "local_loss": True})
    assert clip.views == {"view1": 0.5, "view2": 0.5}
    assert clip.local_loss
