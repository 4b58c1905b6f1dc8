"""The tamper section: the attacks `peel tamper` runs, and the seed group's attack sweep as its
default grid. Each grid point is checked where the grid is planned (attacks/plan.py, before any
weights load) against its kind's own options: this module knows no kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from peel.config.fields import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, option
from peel.config.sections import DataSource
from peel.errors import PeelError


# The seed group's standard attack sweep (research-line-2026.md), as tamper.grid's default. Their
# attacks ran up to 3000 steps; warmup given there in steps is a share of the attack here (30 and
# 100 of 3000), so the sweep keeps its shape at any tamper.steps. Their "paper setting" read its
# data twice: epochs 2 over half as many examples in the same steps.
SEED_ATTACK_SWEEP = [
    {"lr": 2.0e-5, "lr_scheduler": "cosine", "warmup_ratio": 0.1},
    {"lr": 2.0e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.1},
    {"lr": 1.0e-3, "lr_scheduler": "cosine", "warmup_ratio": 0.1},
    {"lr": 2.0e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.01},
    {"lr": 2.0e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.033},
    {"lr": 2.0e-4, "lr_scheduler": "constant", "warmup_ratio": 0.1},
    {"lr": 2.0e-5, "lr_scheduler": "cosine", "warmup_ratio": 0.01, "epochs": 2},
]
# Keys a grid point may not set: they describe the whole grid, not one attack (every attack
# tracks the same tasks, so their worst case compares like with like).
GRID_WIDE_KEYS = ("grid", "few_shot", "tasks")


@dataclass
class TamperConfig:
    data: DataSource = option(
        DataSource(path="Unlearning/WMDP-Bio-Remove-Dataset"),
        "Text the attacker fine-tunes on: forget-domain text, or retain / general text for a benign attack.",
    )
    tasks: list[str] = option(
        ["wmdp_bio_robust", "mmlu"],
        "Tasks evaluated during the attack: the forget task(s) first, then the retain task last "
        "(with two or more), so an attack that only breaks the model shows as such.",
    )
    few_shot: list[int] = option(
        [0, 5],
        "Zero-training attacks: lm-eval num_fewshot on the forget task(s), reported beside the fine-tuning "
        "attacks (0 = the model as it is, which is also step 0 of every fine-tuning attack); [] = none.",
        NON_NEGATIVE,
    )
    grid: list[dict[str, Any]] = option(
        SEED_ATTACK_SWEEP,
        "Attacks, each a mapping of tamper keys that differ from this section, and `kind` (fine_tune, the "
        "default; quantize with bits, group_size; orthogonalize with components, num_examples; few_shot with "
        "shots; prune, WandA or by the unlearning's change, with sparsity, by; prompt, a template around each "
        "question (jailbreak, expert, prefill, or your own); soft_prompt, trained input embeddings, with tokens, "
        "lr; latent, a trained residual-stream push, with epsilon, layers, lr) (default: the seed group's "
        "standard fine-tuning sweep); [] = one fine-tuning attack with this section's settings. peel tamper "
        "--grid replaces it.",
    )
    adapter: Literal["full", "lora"] = option("full", "Fine-tune all weights or a LoRA adapter on every linear layer.")
    lora_rank: int = option(16, "Rank of the attacker's LoRA adapter (alpha = rank).", AT_LEAST_ONE)
    optimizer: Literal["adamw", "sgd"] = option("adamw", "adamw, or sgd (momentum 0.9).")
    lr: float = option(2e-5, "Peak attack learning rate.", POSITIVE)
    lr_scheduler: Literal["constant", "cosine", "linear"] = option(
        "constant",
        "Learning-rate schedule after warmup (transformers' get_scheduler). constant with a warmup runs as "
        "transformers' constant_with_warmup, whose plain constant would ignore the warmup.",
    )
    warmup_ratio: float = option(0.0, "Share of the attack's steps spent warming up (rounded up).", FRACTION)
    warmup_steps: int = option(0, "Warmup steps; when > 0 it wins over warmup_ratio, as in transformers.", NON_NEGATIVE)
    weight_decay: float = option(0.0, "Weight decay (decoupled for adamw).", NON_NEGATIVE)
    max_grad_norm: float = option(0.0, "Clip the attack's gradient to this norm; 0 = off.", NON_NEGATIVE)
    per_device_batch_size: int = option(4, "Examples per attack step.", AT_LEAST_ONE)
    steps: int = option(100, "Attack optimizer steps.", NON_NEGATIVE)
    epochs: int = option(
        1, "Passes over the attack examples within tamper.steps (sizes the default num_examples).", AT_LEAST_ONE
    )
    num_examples: int | None = option(
        None,
        "Attack examples; null = steps x per_device_batch_size / epochs (what the attack reads). "
        "A corpus with fewer gives what it has.",
        AT_LEAST_ONE,
    )
    max_length: int = option(512, "Tokens per attack example.", AT_LEAST_ONE)
    eval_every: int = option(10, "Evaluate every N attack steps (and at step 0 and the last step).", AT_LEAST_ONE)
    eval_steps: list[int] = option(
        [], "Steps to evaluate at instead, besides step 0 and the last: sparse points for a long attack, e.g. "
        "[10, 30, 100, 300] of 1000 steps; [] = every eval_every.", AT_LEAST_ONE,
    )
    dtype: Literal["bfloat16", "float32"] | None = option(
        None, "Weight and compute dtype of the attacked model; null = train.dtype."
    )
    seed: int = option(0, "Seed for the attack's data order and adapter initialisation.", NON_NEGATIVE)

    def validate(self) -> None:
        """One attack's settings (a grid's points are checked as each point's attack is built, where
        the grid is planned)."""
        late = [step for step in self.eval_steps if step > self.steps]
        if not self.grid and late:
            raise PeelError(f"tamper.eval_steps has step {late[0]}, after the attack's last (tamper.steps={self.steps}); "
                            "accepted: steps up to tamper.steps")


def split_tasks(tasks: list[str]) -> tuple[list[str], str | None]:
    """(forget tasks, retain task) of tamper.tasks: with two or more tasks the last one is the retain task."""
    if len(tasks) >= 2:
        return list(tasks[:-1]), tasks[-1]
    return list(tasks), None
