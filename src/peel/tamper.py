"""The tampering attack: fine-tune a model on forget-domain text and watch forget accuracy return.

`tamper` is the loop (causal-LM loss, AdamW at a constant learning rate, full weights or a LoRA
adapter); `attack` loads a model and its data and measures the lm-eval tasks along the way.
A model whose knowledge was really removed stays near chance; one whose knowledge was only
hidden climbs back to the baseline within a few steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from peel.config import EvalConfig, TamperConfig
from peel.errors import PeelError
from peel.run_folder import read_json, write_json

TAMPER_FILE = "tamper.json"


def train_all_weights(model):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def train_lora_adapter(model):
    """Rank 16 on every linear layer: the seed's unlearning adapter, now in the attacker's hands."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))


# tamper.adapter -> how the attacker's trainable parameters are set up
ADAPTERS = {"full": train_all_weights, "lora": train_lora_adapter}


def batches(examples: list[list[int]], batch_size: int, seed: int):
    """Endless batches: a fresh shuffle of the examples for each pass."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [examples[index] for index in order[start : start + batch_size]]


def tamper(
    model,
    tokenizer,
    examples: list[list[int]],
    adapter: str,
    lr: float,
    steps: int,
    per_device_batch_size: int,
    eval_every: int,
    seed: int,
    measure: Callable[[torch.nn.Module], dict[str, float]],
) -> list[dict]:
    """Fine-tune `model` in place; return [{"step", **measure(model)}] at step 0, every `eval_every` and the last."""
    from peel.data import collate

    if adapter not in ADAPTERS:
        raise PeelError(f"tamper.adapter={adapter!r} is not known; accepted: {', '.join(ADAPTERS)}")
    if len(examples) < per_device_batch_size:
        raise PeelError(f"tamper needs at least {per_device_batch_size} examples (one batch); got {len(examples)}")
    if steps < 0 or eval_every < 1:
        raise PeelError(f"tamper.steps={steps} and tamper.eval_every={eval_every} must be >= 0 and >= 1")
    model = ADAPTERS[adapter](model)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history = [{"step": 0, **measure(model)}]
    stream = batches(examples, per_device_batch_size, seed)
    model.train()
    for step in range(1, steps + 1):
        input_ids, attention_mask = collate(next(stream), tokenizer.pad_token_id)
        labels = input_ids.masked_fill(attention_mask == 0, -100)  # padding is not text to learn
        loss = model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), labels=labels.to(device)
        ).loss
        if not torch.isfinite(loss):
            raise PeelError(f"tamper loss became {loss.item()} at step {step}; lower tamper.lr")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % eval_every == 0 or step == steps:
            history.append({"step": step, **measure(model)})
            print(f"tamper step {step}: loss {loss.item():.4f} " + " ".join(f"{k} {v:.4f}" for k, v in history[-1].items() if k != "step"))
            model.train()
    model.eval()
    return history


def attack(name_or_path: str, tamper_settings: TamperConfig, evaluation: EvalConfig, dtype: str = "float32") -> list[dict]:
    """Load `name_or_path` and its attack data, run `tamper`, and return the accuracy curve."""
    from peel.data import load_texts, tokenize
    from peel.evaluation import evaluate
    from peel.evaluation.harness import manager_for
    from peel.models import load_model, load_model_config, load_tokenizer

    if not tamper_settings.tasks:
        raise PeelError("tamper.tasks is empty; accepted: a list of tasks such as [wmdp_bio_robust]")
    # Everything that can be wrong with the inputs is found before the weights load.
    manager_for(tamper_settings.tasks)
    load_model_config(name_or_path)
    tokenizer = load_tokenizer(name_or_path)
    # A count the user gave must be there; the default (what the attack reads) takes what there is.
    required = tamper_settings.num_examples is not None
    texts = load_texts(tamper_settings.data, attack_examples(tamper_settings), tamper_settings.seed, required)
    examples = tokenize(texts, tokenizer, tamper_settings.max_length)
    model = load_model(name_or_path, dtype=dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")

    def measure(current) -> dict[str, float]:
        results = evaluate(
            current, tokenizer, tamper_settings.tasks, evaluation.batch_size, evaluation.max_length, evaluation.limit
        )
        return results["accuracy"]

    return tamper(
        model,
        tokenizer,
        examples,
        adapter=tamper_settings.adapter,
        lr=tamper_settings.lr,
        steps=tamper_settings.steps,
        per_device_batch_size=tamper_settings.per_device_batch_size,
        eval_every=tamper_settings.eval_every,
        seed=tamper_settings.seed,
        measure=measure,
    )


def attack_examples(settings: TamperConfig) -> int:
    """tamper.num_examples, or by default as many as the attack reads (each example once)."""
    if settings.num_examples is not None:
        return settings.num_examples
    return max(settings.steps, 1) * settings.per_device_batch_size


def write_curve(folder: str | Path, history: list[dict]) -> Path:
    path = Path(folder) / TAMPER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, history)  # whole or not at all, like every file a report reads
    return path


def read_curve(folder: str | Path) -> list[dict] | None:
    """The folder's tamper.json, None when it has none, a PeelError when it is malformed."""
    path = Path(folder) / TAMPER_FILE
    if not path.is_file():
        return None
    history = read_json(path, "tamper.json as peel tamper writes it")
    if not isinstance(history, list) or not all(isinstance(row, dict) and "step" in row for row in history):
        raise PeelError(f"{path} must be a list of {{\"step\": .., \"<task>\": accuracy}} rows")
    return history
