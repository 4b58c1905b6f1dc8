"""One fine-tuning attack on a tiny model: its evaluations, that it trains, its schedule, clipping,
adapter rank, and how it stops (a signal, a non-finite loss)."""

from __future__ import annotations

import pytest
import torch

from peel.config import TamperConfig
from peel.data import collate, tokenize
from peel.errors import PeelError, Preempted
from peel.attacks.fine_tune import AttackDiverged, attack_examples, make_scheduler, tamper, warmup_steps
from tiny_lm import TEXTS, tiny_model, tiny_tokenizer


def language_model_loss(model, tokenizer, examples) -> float:
    input_ids, attention_mask = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids.masked_fill(attention_mask == 0, -100)).loss.item()


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_tamper_evaluates_on_schedule_and_learns_the_text(adapter):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    examples = tokenize(TEXTS[:4], tokenizer, max_length=32)
    before = language_model_loss(model, tokenizer, examples)
    embedding = model.get_input_embeddings().weight.detach().clone()
    measured = []

    def measure(current):
        measured.append(current.training)
        return {"testbed_forget": 0.25 + 0.01 * len(measured)}

    history = tamper(model, tokenizer, examples, adapter=adapter, lr=1e-2, steps=7, per_device_batch_size=2,
                     eval_every=3, seed=0, measure=measure)

    assert [row["step"] for row in history] == [0, 3, 6, 7]
    assert history[1] == {"step": 3, "testbed_forget": 0.27}
    assert language_model_loss(model, tokenizer, examples) < before
    changed = not torch.equal(model.get_input_embeddings().weight, embedding)
    assert changed == (adapter == "full")  # LoRA trains adapters only


def test_tamper_rejects_too_few_examples():
    tokenizer = tiny_tokenizer()
    with pytest.raises(PeelError, match="at least 4 examples"):
        tamper(tiny_model(tokenizer), tokenizer, [[1, 2]], adapter="full", lr=1e-3, steps=1,
               per_device_batch_size=4, eval_every=1, seed=0, measure=lambda _: {})


def learning_rates(name: str, warmup: int, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(name, optimizer, warmup, steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_schedules_warm_up_then_follow_their_shape():
    assert learning_rates("constant", 0, 4) == [1.0] * 4
    # transformers' own "constant" ignores a warmup; tamper's constant with warmup ramps first.
    assert learning_rates("constant", 2, 5) == [0.0, 0.5, 1.0, 1.0, 1.0]
    cosine = learning_rates("cosine", 2, 6)
    assert cosine[:3] == [0.0, 0.5, 1.0] and cosine[3] > cosine[4] > cosine[5] > 0
    assert learning_rates("linear", 0, 4) == [1.0, 0.75, 0.5, 0.25]
    with pytest.raises(PeelError, match="accepted: constant, cosine, linear"):
        make_scheduler("constant_with_restarts", torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 0, 3)


def test_warmup_steps_win_over_the_ratio_which_is_rounded_up():
    assert warmup_steps(100, 0.1, 0) == 10
    assert warmup_steps(100, 0.033, 0) == 4  # the seed sweep's 100-of-3000-steps warmup, at 100 steps
    assert warmup_steps(100, 0.1, 30) == 30
    assert warmup_steps(0, 0.5, 0) == 0


def test_default_example_count_is_what_the_attack_reads():
    assert attack_examples(TamperConfig(steps=100, per_device_batch_size=8)) == 800
    assert attack_examples(TamperConfig(steps=100, per_device_batch_size=8, epochs=2)) == 400
    assert attack_examples(TamperConfig(steps=100, num_examples=50)) == 50


def test_clipping_bounds_the_first_sgd_step_and_lora_takes_its_rank():
    tokenizer = tiny_tokenizer()
    examples = tokenize(TEXTS[:4], tokenizer, max_length=32)
    model = tiny_model(tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    tamper(model, tokenizer, examples, adapter="full", optimizer="sgd", lr=1.0, max_grad_norm=1e-3, steps=1,
           per_device_batch_size=2, eval_every=1, seed=0, measure=lambda _: {})
    moved = torch.sqrt(sum(((p.detach() - before[name]) ** 2).sum() for name, p in model.named_parameters()))
    assert moved.item() == pytest.approx(1e-3, rel=1e-3)  # SGD's first step is lr x the clipped gradient

    adapted = tamper(tiny_model(tokenizer), tokenizer, examples, adapter="lora", lora_rank=3, lr=1e-3, steps=0,
                     per_device_batch_size=2, eval_every=1, seed=0, measure=lambda m: {"rank": float(
                         next(p.shape[0] for n, p in m.named_parameters() if "lora_A" in n))})
    assert adapted == [{"step": 0, "rank": 3.0}]


def test_a_stop_request_drops_the_attack_and_a_non_finite_loss_keeps_what_was_measured():
    tokenizer = tiny_tokenizer()
    examples = tokenize(TEXTS[:4], tokenizer, max_length=32)
    asked = iter([None, None, "SIGTERM"])
    with pytest.raises(Preempted, match="SIGTERM during an attack, at step 3"):
        tamper(tiny_model(tokenizer), tokenizer, examples, adapter="full", lr=1e-3, steps=5, per_device_batch_size=2,
               eval_every=1, seed=0, measure=lambda _: {"acc": 0.5}, should_stop=lambda: next(asked))

    broken = tiny_model(tokenizer)
    with torch.no_grad():
        broken.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(AttackDiverged) as diverged:
        tamper(broken, tokenizer, examples, adapter="full", lr=1e-3, steps=5, per_device_batch_size=2,
               eval_every=1, seed=0, measure=lambda _: {"acc": 0.25}, initial={"acc": 0.2})
    assert diverged.value.history == [{"step": 0, "acc": 0.2}]  # the given step 0, not a new measurement
