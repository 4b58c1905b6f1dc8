"""Pretraining a small GPT-NeoX from scratch on the world's text, with plain PyTorch.

Single-threaded on purpose: on a 2-core machine two single-thread runs (base and filtered) side
by side beat one two-thread run after the other, and one thread makes the run bit-reproducible.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    num_layers: int = 8
    hidden_size: int = 128
    num_heads: int = 4
    # Given explicitly: transformers' GPT-NeoX default is not 4 x hidden.
    intermediate_size: int = 512
    max_position_embeddings: int = 512


@dataclass(frozen=True)
class Schedule:
    steps: int = 800  # accuracy jumps late (~375 steps to 0.90); stop early and it looks like failure
    batch_size: int = 32
    sequence_length: int = 128
    lr: float = 2e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0


def build_model(shape: ModelShape, tokenizer):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return GPTNeoXForCausalLM(config)


def packed_batches(token_lists: list[list[int]], eos_id: int, schedule: Schedule, seed: int):
    """Endless batches of packed rows: each epoch shuffles the documents, joins them with eos
    and cuts the stream into rows of `sequence_length` tokens (a batch may span two epochs, so
    a corpus smaller than one batch still works)."""
    import torch

    rng = random.Random(seed)
    order = list(range(len(token_lists)))
    pending: list[list[int]] = []
    while True:
        rng.shuffle(order)
        stream = [token for index in order for token in token_lists[index] + [eos_id]]
        for start in range(0, len(stream) - schedule.sequence_length + 1, schedule.sequence_length):
            pending.append(stream[start : start + schedule.sequence_length])
            if len(pending) == schedule.batch_size:
                yield torch.tensor(pending)
                pending = []


def learning_rate(step: int, schedule: Schedule) -> float:
    warmup = max(1, int(schedule.warmup_ratio * schedule.steps))
    if step < warmup:
        return schedule.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, schedule.steps - warmup)
    return schedule.lr * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(texts: list[str], tokenizer_dir: str, output_dir: str, shape: ModelShape, schedule: Schedule,
             seed: int, log_every: int = 100) -> dict:
    """Train a fresh model on `texts` and save model and tokenizer to `output_dir`."""
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(shape, tokenizer)
    token_lists = [tokenizer(text)["input_ids"] for text in texts]
    batches = packed_batches(token_lists, tokenizer.eos_token_id, schedule, seed)

    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # norms and biases
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=schedule.lr, betas=(0.9, 0.98),
    )
    model.train()
    started = time.time()
    loss_value = float("nan")
    for step in range(schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, schedule)
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.max_grad_norm)
        optimizer.step()
        loss_value = loss.item()
        if log_every and (step % log_every == 0 or step == schedule.steps - 1):
            print(f"[{output_dir}] step {step} loss {loss_value:.4f} ({time.time() - started:.0f}s)", flush=True)
    model.eval()
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return {"final_loss": loss_value, "seconds": time.time() - started,
            "parameters": sum(p.numel() for p in model.parameters())}
