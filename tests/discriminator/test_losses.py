"""Discriminator loss variants against values computed by hand from the formulas in docs/algorithm.md."""

import math

import pytest
import torch

from gad_trl import LOSS_TYPES, discriminator_loss


def nls(x):  # -log sigmoid(x), by hand
    return math.log1p(math.exp(-x))


def test_bradley_terry_matches_hand_value():
    t, s = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # d = [1, -1]
    loss, info = discriminator_loss(t, s)
    expected = (nls(1.0) + nls(-1.0)) / 2  # = 0.81326
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert info["bt_loss"] == pytest.approx(expected, abs=1e-6)
    assert info["accuracy"] == 0.5
    assert info["score_diff"] == pytest.approx(0.0)
    assert info["teacher_score_mean"] == pytest.approx(0.5)
    assert info["student_score_mean"] == pytest.approx(0.5)
    assert info["teacher_score_std"] == pytest.approx(math.sqrt(0.5))


def test_hinge_matches_hand_value():
    t, s = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # d = [1, -1]; m = 1, T = 2
    loss, info = discriminator_loss(t, s, loss_type="hinge")
    hinge = (0.0 + 2.0) / 2
    bce = (nls(0.5) + nls(-0.5)) / 2
    assert info["hinge_loss"] == pytest.approx(hinge)
    assert info["bce_loss"] == pytest.approx(bce, abs=1e-6)
    assert loss.item() == pytest.approx(hinge + 0.5 * bce, abs=1e-6)  # 1.36204


def test_two_sided_hinge_matches_hand_value():
    t, s = torch.tensor([6.0, 0.0]), torch.tensor([0.0, 0.0])  # d = [6, 0]; m = 1, M = 5
    loss, info = discriminator_loss(t, s, loss_type="two_sided_hinge")
    hinge, upper = (0 + 1) / 2, (1 + 0) / 2
    bce = (nls(3.0) + nls(0.0)) / 2
    assert info["upper_hinge_loss"] == pytest.approx(upper)
    assert loss.item() == pytest.approx(hinge + upper + 0.5 * bce, abs=1e-6)  # 1.18543


def test_balanced_matches_hand_value():
    t, s = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])  # d = [2, -1]
    loss, info = discriminator_loss(t, s, loss_type="balanced")
    bce = (nls(1.0) + nls(-0.5)) / 2
    reg = (4 + 0) / 2 + (0 + 1) / 2
    over = (0.5**2 + 0) / 2
    assert info["score_reg_loss"] == pytest.approx(reg)
    assert info["overconfidence_loss"] == pytest.approx(over)
    assert loss.item() == pytest.approx(1.5 * bce + 0.005 * reg + 0.5 * over, abs=1e-6)  # 1.04050


def test_constants_are_used_and_clip_applies():
    t, s = torch.tensor([100.0]), torch.tensor([0.0])
    _, info = discriminator_loss(t, s, loss_type="hinge", temperature=2.0, clip=10.0)
    assert info["bce_loss"] == pytest.approx(nls(10.0), rel=1e-4)  # d/T = 50 clipped to 10
    loss_m3, _ = discriminator_loss(torch.tensor([1.0]), torch.tensor([0.0]), loss_type="hinge", margin=3.0, hinge_bce_weight=0.0)
    assert loss_m3.item() == pytest.approx(2.0)


def test_bradley_terry_gradient_vanishes_when_saturated():
    t = torch.tensor([30.0], requires_grad=True)
    loss, _ = discriminator_loss(t, torch.tensor([0.0]))
    loss.backward()
    assert abs(t.grad.item()) < 1e-10  # the documented saturation of the paper's loss


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_variant_separates_teacher_from_student(loss_type):
    # Gradient descent on the scores themselves must push teacher scores above student ones.
    t = torch.zeros(4, requires_grad=True)
    s = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([t, s], lr=0.5)
    for _ in range(50):
        loss, info = discriminator_loss(t, s, loss_type=loss_type)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert info["accuracy"] == 1.0 and info["score_diff"] > 0


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ValueError, match="loss_type='nope'"):
        discriminator_loss(torch.zeros(2), torch.zeros(2), loss_type="nope")
    with pytest.raises(TypeError, match="margn"):
        discriminator_loss(torch.zeros(2), torch.zeros(2), margn=1.0)
    with pytest.raises(ValueError, match="same length"):
        discriminator_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="no pairs"):
        discriminator_loss(torch.zeros(0), torch.zeros(0))
