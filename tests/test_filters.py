"""Gradient filters on known gradients."""

import torch

from peel.unlearning.filters import GRADIENT_FILTERS

FORGET = torch.tensor([1.0, -2.0, 3.0, 0.0, -1.0])
RETAIN = torch.tensor([2.0, 1.0, 0.0, -4.0, -3.0])


def test_none_sums():
    assert torch.equal(GRADIENT_FILTERS["none"](FORGET, RETAIN), torch.tensor([3.0, -1.0, 3.0, -4.0, -4.0]))


def test_same_sign_zeroes_elements_of_opposite_sign():
    # Element 1 disagrees (-2 vs 1) and is dropped whole; zeros disagree with nothing.
    assert torch.equal(GRADIENT_FILTERS["same_sign"](FORGET, RETAIN), torch.tensor([3.0, 0.0, 3.0, -4.0, -4.0]))


def test_asymmetric_drops_only_disagreeing_forget_elements():
    assert torch.equal(GRADIENT_FILTERS["asymmetric"](FORGET, RETAIN), torch.tensor([3.0, 1.0, 3.0, -4.0, -4.0]))
