"""Batches gathered on the device: the padded batches `collate` makes, and random targets that
depend on the example and position alone, never on the batch around them."""

from __future__ import annotations

import torch

from peel.unlearning.batches import Corpus, RandomTargets, example_order, mix
from peel.data import collate


def corpus_examples():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 12, (20,), generator=generator).tolist()
    return [torch.randint(2, 50, (length,), generator=generator).tolist() for length in lengths]


def test_gathered_batches_are_the_collated_ones():
    examples = corpus_examples()
    masks = [[index % 2 for index in range(len(ids))] for ids in examples]
    corpus = Corpus(examples, pad_token_id=1, device="cpu", masks=masks)
    order = example_order(len(examples), 2, seed=3, phase=1)
    assert sorted(order.tolist()) == sorted(list(range(20)) * 2)
    for indices in order.split(6):
        batch = corpus.batch(indices)
        input_ids, attention_mask = collate([examples[i] for i in indices.tolist()], 1)
        assert torch.equal(batch.input_ids, input_ids) and torch.equal(batch.attention_mask, attention_mask)
        assert torch.equal(batch.loss_mask, collate([masks[i] for i in indices.tolist()], 0)[0])
        assert batch.random_targets is None


def test_random_targets_depend_on_example_and_position_only():
    examples = corpus_examples()
    corpus = Corpus(examples, pad_token_id=1, device="cpu")
    targets = RandomTargets(seed=7, phase=2, vocab=50)
    whole = corpus.batch(torch.tensor([4, 9, 13, 2]), targets)
    for row, index in enumerate([4, 9, 13, 2]):
        alone = corpus.batch(torch.tensor([index]), targets)  # another batch, another width
        length = len(examples[index])
        assert torch.equal(alone.random_targets[0, :length], whole.random_targets[row, :length])
    assert not torch.equal(RandomTargets(7, 3, 50)(torch.tensor([4]), 8), targets(torch.tensor([4]), 8))  # another phase
    assert not torch.equal(RandomTargets(8, 2, 50)(torch.tensor([4]), 8), targets(torch.tensor([4]), 8))  # another seed


def test_random_targets_are_uniform_over_the_vocabulary():
    drawn = RandomTargets(seed=0, phase=0, vocab=10)(torch.arange(400), 100)
    assert drawn.min() == 0 and drawn.max() == 9
    counts = torch.bincount(drawn.flatten(), minlength=10).float()
    chi_square = ((counts - counts.mean()) ** 2 / counts.mean()).sum()
    assert chi_square < 27.9  # the 0.999 quantile of chi-square with 9 degrees of freedom
    # Neighbouring examples and positions are not correlated: a target says nothing about the next one.
    same_as_next = (drawn[:, 1:] == drawn[:, :-1]).float().mean()
    assert abs(same_as_next - 0.1) < 0.01


def test_hash_is_the_same_on_python_ints_and_tensors():
    values = [0, 1, 2**31 - 1, 2**32 - 1, 123456789]
    assert mix(torch.tensor(values)).tolist() == [mix(value) for value in values]
    assert len(set(mix(torch.arange(100_000)).tolist())) == 100_000  # a bijection: no collisions
