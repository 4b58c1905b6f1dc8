"""The fine-tuning attack: fine-tune a model on some text and watch the tracked tasks' accuracy.

`tamper` is the loop: causal-LM loss, AdamW or SGD, a transformers schedule with warmup, full
weights or a LoRA adapter, optional clipping and weight decay, evaluations at step 0 and every
`eval_every` steps. `attack_model` reads a `tamper` config section's data and runs the loop on a loaded
model; `run` is the kind's entry in the table (kinds.py). A model whose knowledge was really
removed stays near chance; one whose knowledge was only hidden climbs back within a few steps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from peel.config import EvalConfig, TamperConfig
from peel.errors import PeelError, Preempted

if TYPE_CHECKING:
    import torch


class AttackDiverged(Exception):
    """The attack's loss became non-finite; `history` holds what was measured until then."""

    def __init__(self, message: str, history: list[dict]):
        super().__init__(message)
        self.history = history


def train_all_weights(model, rank: int):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def train_lora_adapter(model, rank: int):
    """An adapter on every linear layer, alpha = rank: the seed's unlearning adapter, now in the attacker's hands."""
    from peft import LoraConfig

    from peel.models import peft_model

    return peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear", lora_dropout=0.0))


# tamper.adapter -> how the attacker's trainable parameters are set up
ADAPTERS = {"full": train_all_weights, "lora": train_lora_adapter}
# tamper.optimizer -> the optimizer over the trainable parameters
# (torch is imported where an attack runs: the table of attack kinds, which the report and the model
# cards read, costs no torch import)
def adamw(parameters, lr: float, weight_decay: float):
    import torch

    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def sgd(parameters, lr: float, weight_decay: float):
    import torch

    return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)


OPTIMIZERS = {"adamw": adamw, "sgd": sgd}
# tamper.lr_scheduler values: names transformers' get_scheduler knows.
SCHEDULES = ("constant", "cosine", "linear")


def warmup_steps(steps: int, warmup_ratio: float, explicit_steps: int) -> int:
    """Explicit warmup steps when given (> 0), else the ratio of the attack, rounded up (as transformers does)."""
    return explicit_steps if explicit_steps > 0 else math.ceil(warmup_ratio * steps)


def make_scheduler(name: str, optimizer, warmup: int, steps: int):
    """transformers' schedule `name`; constant with a warmup is its constant_with_warmup, since its
    plain constant schedule would ignore the warmup."""
    from transformers import get_scheduler

    if name not in SCHEDULES:
        raise PeelError(f"tamper.lr_scheduler={name!r} is not known; accepted: {', '.join(SCHEDULES)}")
    schedule = "constant_with_warmup" if name == "constant" and warmup > 0 else name
    return get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=max(steps, 1))


def batches(examples: list[list[int]], batch_size: int, seed: int):
    """Endless batches: a fresh shuffle of the examples for each pass."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [examples[index] for index in order[start : start + batch_size]]


def tamper(
    model,
    tokenizer,
    examples: list[list[int]],
    *,
    adapter: str,
    lr: float,
    steps: int,
    per_device_batch_size: int,
    eval_every: int,
    seed: int,
    measure: Callable[[torch.nn.Module], dict[str, float]],
    eval_steps: list[int] = (),
    lora_rank: int = 16,
    optimizer: str = "adamw",
    lr_scheduler: str = "constant",
    warmup: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float = 0.0,
    initial: dict[str, float] | None = None,
    should_stop: Callable[[], str | None] | None = None,
) -> list[dict]:
    """Fine-tune `model` in place; return [{"step", **measure(model)}] at step 0, every `eval_every`
    (or at `eval_steps`, when given) and the last.

    `initial`, when given, is step 0's measurement (the untouched model, measured once for a whole
    grid). `should_stop` is asked after every step; when it names a reason, the attack is dropped
    with `Preempted` (a grid runs it again from the start).
    """
    import torch

    from peel.data import collate

    if adapter not in ADAPTERS or optimizer not in OPTIMIZERS:
        raise PeelError(f"tamper.adapter={adapter!r} / tamper.optimizer={optimizer!r}; accepted: "
                        f"{' | '.join(ADAPTERS)} / {' | '.join(OPTIMIZERS)}")
    if len(examples) < per_device_batch_size:
        raise PeelError(f"tamper needs at least {per_device_batch_size} examples (one batch); got {len(examples)}")
    if steps < 0 or eval_every < 1:
        raise PeelError(f"tamper.steps={steps} and tamper.eval_every={eval_every} must be >= 0 and >= 1")
    torch.manual_seed(seed)  # the LoRA adapter's initialisation
    model = ADAPTERS[adapter](model, lora_rank)
    device = next(model.parameters()).device
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer_ = OPTIMIZERS[optimizer](parameters, lr, weight_decay)
    scheduler = make_scheduler(lr_scheduler, optimizer_, warmup, steps)
    evaluated = evaluated_steps(steps, eval_every, eval_steps)
    history = [{"step": 0, **(initial if initial is not None else measure(model))}]
    stream = batches(examples, per_device_batch_size, seed)
    model.train()
    for step in range(1, steps + 1):
        input_ids, attention_mask = collate(next(stream), tokenizer.pad_token_id)
        labels = input_ids.masked_fill(attention_mask == 0, -100)  # padding is not text to learn
        loss = model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), labels=labels.to(device)
        ).loss
        if not torch.isfinite(loss):
            model.eval()
            raise AttackDiverged(f"the attack's loss became {loss.item()} at step {step}", history)
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer_.step()
        scheduler.step()
        optimizer_.zero_grad(set_to_none=True)
        reason = should_stop() if should_stop is not None else None
        if reason:
            raise Preempted(f"stopped by {reason} during an attack, at step {step} (that attack is dropped)")
        if step in evaluated:
            history.append({"step": step, **measure(model)})
            print(f"tamper step {step}: loss {loss.item():.4f} " + " ".join(f"{k} {v:.4f}" for k, v in history[-1].items() if k != "step"))
            model.train()
    model.eval()
    return history


def evaluated_steps(steps: int, eval_every: int, eval_steps: list[int] = ()) -> set[int]:
    """The steps after 0 an attack evaluates: `eval_steps` when given, else every `eval_every`; and the last."""
    chosen = {step for step in eval_steps if step <= steps} if eval_steps else set(range(eval_every, steps + 1, eval_every))
    return chosen | ({steps} if steps else set())


def attack_model(
    model,
    tokenizer,
    settings: TamperConfig,
    evaluation: EvalConfig,
    initial: dict[str, float] | None = None,
    should_stop: Callable[[], str | None] | None = None,
) -> list[dict]:
    """Read the attack's data, fine-tune `model` with `settings` and return the accuracy curve of settings.tasks."""
    from peel.evaluation import evaluate

    if not settings.tasks:
        raise PeelError("tamper.tasks is empty; accepted: a list of tasks such as [wmdp_bio_robust, mmlu]")
    examples = attack_text(settings, tokenizer)

    def measure(current) -> dict[str, float]:
        results = evaluate(current, tokenizer, settings.tasks, evaluation.batch_size, evaluation.max_length, evaluation.limit,
                           include_path=evaluation.include_path)
        return results["accuracy"]

    return tamper(model, tokenizer, examples, **loop_settings(settings), measure=measure, initial=initial,
                  should_stop=should_stop)


def attack_text(settings: TamperConfig, tokenizer) -> list[list[int]]:
    """The attack's examples: tamper.data read and tokenized (a count the user gave must be there;
    the default, what the attack reads, takes what there is)."""
    from peel.data import load_texts, tokenize

    texts = load_texts(settings.data, attack_examples(settings), settings.seed, settings.num_examples is not None)
    return tokenize(texts, tokenizer, settings.max_length)


def loop_settings(settings: TamperConfig) -> dict:
    """`tamper`'s keyword arguments from a tamper section: the loop every training attack runs."""
    return {
        "adapter": settings.adapter,
        "lora_rank": settings.lora_rank,
        "optimizer": settings.optimizer,
        "lr": settings.lr,
        "lr_scheduler": settings.lr_scheduler,
        "warmup": warmup_steps(settings.steps, settings.warmup_ratio, settings.warmup_steps),
        "weight_decay": settings.weight_decay,
        "max_grad_norm": settings.max_grad_norm,
        "steps": settings.steps,
        "per_device_batch_size": settings.per_device_batch_size,
        "eval_every": settings.eval_every,
        "eval_steps": settings.eval_steps,
        "seed": settings.seed,
    }


def attack_examples(settings: TamperConfig) -> int:
    """tamper.num_examples, or by default as many as the attack reads (each example `epochs` times)."""
    if settings.num_examples is not None:
        return settings.num_examples
    return math.ceil(max(settings.steps, 1) * settings.per_device_batch_size / settings.epochs)


# --------------------------------------------------------------------------------------------
# The kind's entry (kinds.py)


def untouched(settings: dict) -> bool:
    return True  # step 0 is before the first optimizer step


def evaluations(attack) -> int:
    """The steps after 0 that `tamper` evaluates."""
    settings = attack.settings
    return len(evaluated_steps(settings.steps, settings.eval_every, settings.eval_steps))


def corpus(attack) -> tuple:
    settings = attack.settings
    return settings.data, attack_examples(settings), settings.seed, settings.num_examples is not None


def run(attack, session) -> dict:
    """The attack on the session's model, step 0 shared with the grid's other attacks when known."""
    try:
        curve = attack_model(session.model, session.tokenizer, attack.settings, session.evaluation,
                             initial=session.known_untouched(), should_stop=session.should_stop)
    except AttackDiverged as diverged:  # what it reached until then counts; rerunning would diverge again
        print(f"{attack.name}: {diverged}")
        return {"curve": diverged.history, "error": str(diverged)}
    return {"curve": curve}
