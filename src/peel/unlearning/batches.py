"""Which examples each optimizer step reads, and the padded batches they make, on the device.

Each phase's order is a pure function of (seed, phase), so a checkpoint's position is also the
data position; every process takes its share of each global batch. A corpus is padded into one
table on the device when the run starts, so a step's batch is a gather of rows and a slice, with
no Python loop over examples; random targets are a hash of (seed, phase, example, position)
computed on the device, so a step's batch is the same however it is split across micro-batches
and processes, and no generator state is carried from step to step.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from peel import distributed
from peel.unlearning.objectives import Batch

MASK_32 = 0xFFFFFFFF


def example_order(num_examples: int, epochs: int, seed: int, phase: int) -> torch.Tensor:
    """Each phase sees every example once per epoch, in its own seeded order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + phase)
    return torch.cat([torch.randperm(num_examples, generator=generator) for _ in range(epochs)])


def process_share(order: torch.Tensor, step: int, global_batch_size: int) -> torch.Tensor:
    """This process's examples of global batch `step`."""
    batch = order[step * global_batch_size : (step + 1) * global_batch_size]
    share = global_batch_size // distributed.world_size()
    return batch[distributed.rank() * share : (distributed.rank() + 1) * share]


def mix(value):
    """A 32-bit integer hash (a bijection; Chris Wellons' lowbias32 form with multipliers below 2**31,
    so products of 32-bit values fit int64 and never overflow). Works on Python ints and on int64
    tensors holding values in [0, 2**32)."""
    value = value ^ (value >> 16)
    value = (value * 0x21F0AAAD) & MASK_32
    value = value ^ (value >> 15)
    value = (value * 0x735A2D97) & MASK_32
    return value ^ (value >> 15)


class RandomTargets:
    """Uniformly random token ids for the random_ce forget loss, keyed by (seed, phase, example index,
    position): the same for an example wherever and in whatever batch it is read. Taken modulo
    the vocabulary from 32-bit hashes (a bias of at most vocab / 2**32, below 2e-5 for 50k tokens)."""

    def __init__(self, seed: int, phase: int, vocab: int):
        self.key = mix(mix(mix(seed & MASK_32) ^ ((seed >> 32) & MASK_32)) ^ phase)
        self.vocab = vocab

    def __call__(self, examples: torch.Tensor, width: int) -> torch.Tensor:
        """[len(examples), width] targets of the given example indices (on their device)."""
        positions = mix(torch.arange(width, device=examples.device, dtype=torch.int64))
        example_keys = mix(self.key ^ examples.to(torch.int64))
        return mix(example_keys[:, None] ^ positions[None, :]) % self.vocab


class Corpus:
    """One corpus's token ids (and keyword masks) as right-padded tables on the device, built once."""

    def __init__(self, examples: list[list[int]], pad_token_id: int, device, masks: list[list[int]] | None = None):
        self.lengths = torch.tensor([len(ids) for ids in examples])  # on the host: a batch's width is read without the device
        self.device = torch.device(device)
        self.token_ids = pad_sequence([torch.tensor(ids) for ids in examples], batch_first=True,
                                      padding_value=pad_token_id).to(self.device)
        self.device_lengths = self.lengths.to(self.device)
        self.masks = None
        if masks is not None:
            self.masks = pad_sequence([torch.tensor(mask) for mask in masks], batch_first=True, padding_value=0).to(self.device)

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, indices: torch.Tensor, random_targets: RandomTargets | None = None) -> Batch:
        """The examples `indices` (a host tensor), padded to the longest of them, as collate pads them."""
        width = int(self.lengths[indices].max())
        rows = indices.to(self.device, non_blocking=True)
        input_ids = self.token_ids[rows, :width]
        attention_mask = (torch.arange(width, device=self.device) < self.device_lengths[rows, None]).long()
        loss_mask = None if self.masks is None else self.masks[rows, :width]
        targets = None if random_targets is None else random_targets(rows, width)
        return Batch(input_ids, attention_mask, targets, loss_mask, right_padded=True)
