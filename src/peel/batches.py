"""Which examples each optimizer step reads, and the padded batches they make.

Each phase's order is a pure function of (seed, phase), so a checkpoint's position is also the
data position; every process takes its share of each global batch; random targets are seeded per
example, so a step's batch is the same however it is split across micro-batches and processes.
"""

from __future__ import annotations

import torch

from peel import distributed
from peel.data import collate
from peel.objectives import Batch


def example_order(num_examples: int, epochs: int, seed: int, phase: int) -> list[int]:
    """Each phase sees every example once per epoch, in its own seeded order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + phase)
    return [index for _ in range(epochs) for index in torch.randperm(num_examples, generator=generator).tolist()]


def process_share(order: list[int], step: int, global_batch_size: int) -> list[int]:
    """This process's examples of global batch `step`."""
    batch = order[step * global_batch_size : (step + 1) * global_batch_size]
    share = global_batch_size // distributed.world_size()
    return batch[distributed.rank() * share : (distributed.rank() + 1) * share]


def make_batch(examples, indices, pad_token_id, device, vocab=None, random_seed=None, masks=None) -> Batch:
    input_ids, attention_mask = collate([examples[index] for index in indices], pad_token_id)
    loss_mask = None if masks is None else collate([masks[index] for index in indices], 0)[0].to(device)
    random_targets = None
    if random_seed is not None:
        # Seeded per example, so targets do not depend on how a batch is split across processes.
        seed, phase = random_seed
        random_targets = torch.stack(
            [
                torch.randint(vocab, (input_ids.shape[1],), generator=torch.Generator().manual_seed((seed * 1_000_003 + phase) * 1_000_033 + index))
                for index in indices
            ]
        ).to(device)
    return Batch(input_ids.to(device), attention_mask.to(device), random_targets, loss_mask)
