"""One phase as the step and the adversary see it: the target layer, what trains, and how its
batches are read. The engine makes one `Phase` per target layer; `gradients.compute_gradients`
and the adversaries (adversaries.py) read what they need from it, by name."""

from __future__ import annotations

from dataclasses import dataclass

from peel.config import UnlearnConfig
from peel.unlearning.batches import Corpus


@dataclass(frozen=True)
class Phase:
    weights: object  # weights.LoraWeights or weights.FullWeights
    parallelism: object  # parallel.Local, Replicated or Sharded
    parameters: list  # the phase's trained parameters
    layer: int  # the target layer
    unlearn: UnlearnConfig  # the method's settings
    examples_per_process: int  # per optimizer step: per-example losses are summed and divided by it
    retain_layers: tuple[int, ...] = ()  # the l2 retain loss's layers in this phase
    chunk_tokens: int = 0  # train.loss_chunk_tokens
    number: int = 0  # the phase's place in the schedule (0 = the deepest target)
    steps: int = 1  # optimizer steps in the phase
    seed: int = 0  # train.seed: batches are a pure function of (seed, phase), so resuming needs no state
    global_batch_size: int = 1
    per_device_batch_size: int = 1
    attack_text: Corpus | None = None  # the finetune adversary's text (data.adversary, else the forget corpus)
    collapse_basis: object = None  # [hidden, k] orthonormal retain directions (collapse.py) or None (collapse_components 0)
