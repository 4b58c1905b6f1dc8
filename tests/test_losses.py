"""Each loss against a value computed by hand on a tiny example."""

import math

import torch

from peel.unlearning import losses


def test_max_entropy_kl_is_zero_for_uniform_and_matches_hand_value():
    mask = torch.tensor([[1, 1, 0]])
    uniform = torch.zeros(1, 3, 4)
    assert losses.max_entropy_kl(uniform, mask).item() == 0.0
    # One token with probabilities (0.5, 0.5, 0, ~0): KL(U || p) = sum 1/4 log((1/4)/p_v).
    logits = torch.tensor([[[0.0, 0.0, -1e4, -1e4], [0.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]])
    expected_first = (0.25 * math.log(0.25 / 0.5) * 2 + 0.25 * (math.log(0.25) + 1e4 + math.log(2)) * 2) / math.log(4)
    value = losses.max_entropy_kl(logits, mask)
    assert math.isclose(value.item(), (expected_first + 0.0) / 2, rel_tol=1e-4)


def test_random_ce_uses_targets_and_ignores_padding():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    targets = torch.tensor([[1, 2]])
    mask = torch.tensor([[1, 0]])
    assert math.isclose(losses.random_ce(logits, mask, targets).item(), -math.log(0.25) / math.log(3), rel_tol=1e-6)
    mask = torch.tensor([[1, 1]])
    expected = (-math.log(0.25) - math.log(0.8)) / 2 / math.log(3)
    assert math.isclose(losses.random_ce(logits, mask, targets).item(), expected, rel_tol=1e-6)


def test_l2_distance_averages_tokens_then_layers():
    mask = torch.tensor([[1, 1, 0]])
    zero = torch.zeros(1, 3, 2)
    current = {0: torch.tensor([[[3.0, 4.0], [0.0, 0.0], [100.0, 0.0]]]), 2: torch.tensor([[[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]])}
    value = losses.l2_distance(current, {0: zero, 2: zero}, mask)
    assert value.shape == (1,)
    assert math.isclose(value.item(), ((5 + 0) / 2 + (1 + 1) / 2) / 2)


def test_kl_divergence_original_to_current():
    reference = torch.log(torch.tensor([[[0.5, 0.5]]]))
    current = torch.log(torch.tensor([[[0.9, 0.1]]]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert math.isclose(losses.kl_divergence(reference, current, torch.ones(1, 1)).item(), expected, rel_tol=1e-6)
    assert losses.kl_divergence(reference, reference, torch.ones(1, 1)).item() == 0.0


def test_next_token_nll_shifts_and_masks_padding_targets():
    logits = torch.log(torch.tensor([[[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]]))
    input_ids = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[1, 1, 0]])  # the last token is padding: only position 0 -> token 1 counts
    assert math.isclose(losses.next_token_nll(logits, input_ids, mask).item(), -math.log(0.8), rel_tol=1e-6)


def test_losses_are_per_example():
    logits = torch.randn(3, 5, 7)
    mask = torch.ones(3, 5)
    assert losses.max_entropy_kl(logits, mask).shape == (3,)
    single = losses.max_entropy_kl(logits[1:2], mask[1:2])
    assert torch.allclose(losses.max_entropy_kl(logits, mask)[1], single[0])


def test_top_k_entropy_flattens_the_k_largest_logits_only():
    logits = torch.tensor([[[3.0, 1.0, 0.0, -2.0]]])
    mask = torch.ones(1, 1)
    # Top 2: 3 and 1. p = (e^3, e^1) / (e^3 + e^1); KL(U_2 || p) = -log 2 - (log p_1 + log p_2) / 2.
    normaliser = math.log(math.exp(3) + math.exp(1))
    expected = (-math.log(2) - ((3 - normaliser) + (1 - normaliser)) / 2) / math.log(2)
    assert math.isclose(losses.top_k_entropy(logits, mask, 2).item(), expected, rel_tol=1e-6)
    # The tail does not matter; with K = vocab it is max_entropy_kl.
    moved_tail = torch.tensor([[[3.0, 1.0, -50.0, 0.5]]])
    assert math.isclose(losses.top_k_entropy(moved_tail, mask, 2).item(), expected, rel_tol=1e-6)
    assert torch.allclose(losses.top_k_entropy(logits, mask, 4), losses.max_entropy_kl(logits, mask))
    assert losses.top_k_entropy(torch.tensor([[[2.0, 2.0, 2.0, 0.0]]]), mask, 3).item() == 0.0


def test_npo_per_token_and_per_sequence_by_hand():
    log_probs = torch.tensor([[-1.0, -2.0, -9.0]])
    reference = torch.tensor([[-1.5, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    beta = 2.0
    # ratios 0.5 and -1: per token -log sigmoid(-1) and -log sigmoid(2), averaged.
    per_token = (math.log1p(math.exp(1.0)) + math.log1p(math.exp(-2.0))) / 2
    assert math.isclose(losses.npo(log_probs, reference, mask, beta, per_token=True).item(), per_token, rel_tol=1e-6)
    # per sequence: mean ratio -0.25, -log sigmoid(0.5).
    per_sequence = math.log1p(math.exp(-0.5))
    assert math.isclose(losses.npo(log_probs, reference, mask, beta, per_token=False).item(), per_sequence, rel_tol=1e-6)
    # Where the model is the original, both are log 2.
    same = losses.npo(reference, reference, mask, beta, per_token=True)
    assert math.isclose(same.item(), math.log(2), rel_tol=1e-6)


def test_next_token_log_probs_reads_each_next_token():
    logits = torch.log(torch.tensor([[[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]]))
    input_ids = torch.tensor([[0, 1, 0]])
    values = losses.next_token_log_probs(logits, input_ids)
    assert torch.allclose(values, torch.log(torch.tensor([[0.8, 0.6]])))


def test_a_fully_masked_example_contributes_nothing():
    logits = torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    for value in (losses.max_entropy_kl(logits, mask), losses.top_k_entropy(logits, mask, 3),
                  losses.random_ce(logits, mask, torch.zeros(2, 4, dtype=torch.long))):
        assert value[1].item() == 0.0 and value[0].item() != 0.0
