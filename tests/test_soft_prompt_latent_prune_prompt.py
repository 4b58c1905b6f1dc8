"""The soft-prompt, latent, prune and prompt attacks: each is the model as it is at its zero setting
(bit for bit), changes what it should, leaves the weights alone where it promises to, and runs in a
grid through `peel tamper`; the seed as a grid key and a long, sparsely evaluated attack.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_attack_kinds import batch, loaded
from test_tamper_grid import SMALL, world  # noqa: F401 (the fixture)
from tiny_lm import TEXTS

from peel.attacks import fine_tune, latent, perturbation, prune, soft_prompt
from peel.attacks.plan import grid_attacks
from peel.attacks.prompt import TEMPLATES
from peel.attacks.running import Session
from peel.cli import main
from peel.config import load_config
from peel.data import collate
from peel.evaluation.harness import evaluate, manager_for, templated_questions
from peel.anatomy import find_anatomy, hidden_states

TASKS = ["testbed_forget", "testbed_retain"]


def weights(model) -> dict:
    return {name: value.clone() for name, value in model.state_dict().items()}


def same_weights(model, before: dict) -> bool:
    return all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def attack_text(tokenizer) -> list[list[int]]:
    return tokenizer(TEXTS, add_special_tokens=False)["input_ids"]


def text_loss(model, tokenizer) -> float:
    """Next-token loss of the (hooked) model on the attack text."""
    input_ids, attention_mask = collate(attack_text(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return perturbation.next_token_loss(logits, input_ids.masked_fill(attention_mask == 0, -100)).item()


def trained_losses(model, tokenizer, tensors, lr: float, steps: int = 8) -> list[float]:
    """The attack text's loss before and after `steps` of the fine-tuning loop on `tensors` alone."""
    perturbation.freeze(model)
    curve = fine_tune.tamper(perturbation.Perturbation(model, tensors), tokenizer, attack_text(tokenizer), adapter="full",
                             lr=lr, steps=steps, per_device_batch_size=4, eval_every=steps, seed=0,
                             measure=lambda _: {"loss": text_loss(model, tokenizer)})
    return [row["loss"] for row in curve]


def session_for(model, tokenizer, config) -> Session:
    return Session(model, tokenizer, config.eval, TASKS, {}, (None, tuple(TASKS)))


def small_config(world, *overrides):
    return load_config(None, [*SMALL, world["data"], "tamper.few_shot=[]", "eval.limit=4", *overrides])


# --------------------------------------------------------------------------------------------
# soft prompt


def test_a_prepended_prompt_gives_the_logits_of_its_tokens_written_before_the_input(world):
    model, tokenizer = loaded(world["model"])
    input_ids, attention_mask = batch(tokenizer)
    prompt_ids = torch.tensor(tokenizer("Korvid ticks", add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        written = model(input_ids=torch.cat([prompt_ids.expand(2, -1), input_ids], dim=1),
                        attention_mask=torch.cat([torch.ones(2, len(prompt_ids), dtype=attention_mask.dtype), attention_mask], dim=1)).logits
        handles = soft_prompt.prepending(model, model.get_input_embeddings()(prompt_ids))
        prepended = model(input_ids=input_ids, attention_mask=attention_mask).logits
        bare = model(input_ids).logits  # as lm-eval calls it: input ids alone
        for handle in handles:
            handle.remove()
        plain = model(input_ids).logits
    assert prepended.shape == input_ids.shape + (model.config.vocab_size,)
    assert torch.allclose(prepended, written[:, len(prompt_ids):], atol=1e-5)
    assert torch.allclose(bare[1], written[1, len(prompt_ids):], atol=1e-5)  # the longer text has no padding
    assert not torch.allclose(bare, plain, atol=1e-3)


def test_training_the_soft_prompt_lowers_the_attack_texts_loss_and_leaves_every_weight(world):
    model, tokenizer = loaded(world["model"])
    before = weights(model)
    prompt = torch.nn.Parameter(soft_prompt.initial_prompt(model, attack_text(tokenizer), tokens=4, seed=0))
    started = prompt.detach().clone()
    soft_prompt.prepending(model, prompt)
    first, last = trained_losses(model, tokenizer, [prompt], lr=0.05)
    assert last < first - 0.01 and not torch.equal(prompt.detach(), started)
    assert same_weights(model, before)


def test_the_initial_prompt_is_real_tokens_embeddings_chosen_by_the_seed(world):
    model, tokenizer = loaded(world["model"])
    examples = attack_text(tokenizer)
    prompt = soft_prompt.initial_prompt(model, examples, tokens=5, seed=3)
    table = model.get_input_embeddings().weight
    used = {token for example in examples for token in example}
    assert all(any(torch.equal(row, table[token]) for token in used) for row in prompt)
    assert torch.equal(prompt, soft_prompt.initial_prompt(model, examples, tokens=5, seed=3))
    assert not torch.equal(prompt, soft_prompt.initial_prompt(model, examples, tokens=5, seed=4))


# --------------------------------------------------------------------------------------------
# latent


def test_a_latent_perturbation_at_epsilon_0_leaves_the_model_bit_for_bit(world):
    model, tokenizer = loaded(world["model"])
    input_ids, attention_mask = batch(tokenizer)
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
        vectors = {layer: torch.randn(model.config.hidden_size) for layer in range(find_anatomy(model).num_layers)}
        latent.perturbing(model, vectors, epsilon=0.0)
        assert torch.equal(model(input_ids=input_ids, attention_mask=attention_mask).logits, expected)


@pytest.mark.parametrize("scale", [0.3, 50.0])
def test_the_latent_perturbation_is_at_most_epsilon_times_each_tokens_norm(world, scale):
    model, tokenizer = loaded(world["model"])
    input_ids, attention_mask = batch(tokenizer)
    with torch.no_grad():
        hidden = hidden_states(find_anatomy(model), input_ids, attention_mask, [1])[1]
    vector = torch.randn(hidden.shape[-1], generator=torch.Generator().manual_seed(0))
    vector = scale * vector / vector.norm()
    added = (latent.perturbed(hidden, vector, epsilon=0.1) - hidden).norm(dim=-1)
    bound = 0.1 * hidden.norm(dim=-1)
    assert (added <= bound * (1 + 1e-5)).all()
    # Inside the unit ball the vector's norm is its share of the bound; outside, the bound is reached.
    assert torch.allclose(added, bound * min(scale, 1.0), rtol=1e-4)


def test_training_the_latent_vectors_lowers_the_attack_texts_loss_and_leaves_every_weight(world):
    model, tokenizer = loaded(world["model"])
    before = weights(model)
    vectors = {layer: torch.nn.Parameter(torch.zeros(model.config.hidden_size)) for layer in (0, 1)}
    latent.perturbing(model, vectors, epsilon=0.5)
    first, last = trained_losses(model, tokenizer, list(vectors.values()), lr=0.05)
    assert last < first - 0.01 and all(vector.abs().sum() > 0 for vector in vectors.values())
    assert same_weights(model, before)


# --------------------------------------------------------------------------------------------
# prune


def test_pruning_at_sparsity_0_leaves_every_weight_as_it_is(world):
    model, tokenizer = loaded(world["model"])
    before = weights(model)
    norms = prune.input_norms(model, attack_text(tokenizer), tokenizer.pad_token_id)
    assert prune.prune_by_wanda(model, norms, 0.0) > 0
    assert prune.prune_by_change(model, loaded(world["model"])[0], 0.0) > 0
    assert same_weights(model, before)


def test_wanda_at_one_half_zeroes_the_lower_scoring_half_of_each_row(world):
    model, tokenizer = loaded(world["model"])
    norms = prune.input_norms(model, attack_text(tokenizer), tokenizer.pad_token_id)
    linears = prune.linear_layers(model)
    scores = {name: module.weight.detach().abs() * norms[name] for name, module in linears.items()}
    prune.prune_by_wanda(model, norms, 0.5)
    for name, module in linears.items():
        zeroed = module.weight == 0
        assert (zeroed.sum(dim=1) == module.weight.shape[1] // 2).all(), name
        kept_low = torch.where(zeroed, torch.inf, scores[name]).amin(dim=1)
        pruned_high = torch.where(zeroed, scores[name], -torch.inf).amax(dim=1)
        assert (pruned_high <= kept_low).all(), name


def test_input_norms_leave_out_padding(world):
    model, tokenizer = loaded(world["model"])
    examples = attack_text(tokenizer)[:2]  # of different lengths: the shorter one is padded in a batch
    together = prune.input_norms(model, examples, tokenizer.pad_token_id)
    apart = [prune.input_norms(model, [example], tokenizer.pad_token_id) for example in examples]
    for name, norm in together.items():
        assert torch.allclose(norm, (apart[0][name] ** 2 + apart[1][name] ** 2).sqrt(), rtol=1e-4), name


def test_pruning_by_change_zeroes_the_weights_the_unlearning_changed_most_and_no_other(world):
    original, _ = loaded(world["model"])
    model = copy.deepcopy(original)
    module = find_anatomy(model).layers[1].mlp.dense_h_to_4h  # 32 inputs: sparsity 0.1 may prune 3 per row
    with torch.no_grad():
        module.weight[:, 0] += 1.0  # a large change and a small one per row: both pruned, and no third
        module.weight[:, 5] += 0.001  # weight, since the unlearning left every other one as it was
    before = weights(model)
    prune.prune_by_change(model, original, 0.1)
    for name, value in model.state_dict().items():
        if name.endswith("layers.1.mlp.dense_h_to_4h.weight"):
            assert torch.equal(value[:, [0, 5]], torch.zeros(value.shape[0], 2))
            kept = [column for column in range(value.shape[1]) if column not in (0, 5)]
            assert torch.equal(value[:, kept], before[name][:, kept])
        else:
            assert torch.equal(value, before[name]), name


# --------------------------------------------------------------------------------------------
# prompt


def test_a_template_wraps_each_question_as_the_task_writes_it(world):
    task = manager_for(["testbed_forget"]).load(["testbed_forget"])["tasks"]["testbed_forget"]
    document = next(iter(task.eval_docs))
    plain = task.doc_to_text(document)
    with templated_questions(TEMPLATES["prefill"]):
        assert task.doc_to_text(document) == f"{plain} Sure, here is the correct answer:"
    assert task.doc_to_text(document) == plain and plain


def test_the_bare_question_template_scores_as_the_plain_task_and_another_differs(world):
    model, tokenizer = loaded(world["model"])

    def scores(template):
        return evaluate(model, tokenizer, ["testbed_forget"], 8, 128, 8, template=template)["details"]["testbed_forget"]

    plain = scores(None)
    assert scores("{question}") == plain
    assert scores(TEMPLATES["jailbreak"])["correct_prob"] != plain["correct_prob"]


# --------------------------------------------------------------------------------------------
# each kind's run, and grids


@pytest.mark.parametrize("point", ["{kind: soft_prompt, tokens: 2}", "{kind: latent, epsilon: 0.3}", "{kind: prompt, template: expert}"])
def test_the_attacks_that_train_no_weight_leave_every_weight_as_it_was(world, point):
    config = small_config(world, f"tamper.grid=[{point}]")
    [attack] = grid_attacks(config, [])
    model, tokenizer = loaded(world["model"])
    before = weights(model)
    record = attack_kind_run(attack, session_for(model, tokenizer, config))
    assert record["curve"] and "error" not in record
    assert same_weights(model, before)


def attack_kind_run(attack, session) -> dict:
    from peel.attacks.kinds import KINDS

    return KINDS[attack.kind].run(attack, session)


def test_a_grid_of_every_new_kind_runs_through_peel_tamper(world):
    grid = ("tamper.grid=[{kind: soft_prompt, tokens: 2}, {kind: latent, epsilon: 0.0}, {kind: latent, epsilon: 0.5, layers: [1]}, "
            "{kind: prune, sparsity: 0.0}, {kind: prune, sparsity: 0.5}, {kind: prune, by: change}, {kind: prompt}]")
    command = ["tamper", world["model"], "--output-dir", str(world["out"]), "--baseline", world["model"], *SMALL,
               world["data"], "tamper.few_shot=[0]", "eval.limit=8", grid]
    assert main(command) == 0
    record = json.loads((world["out"] / "tamper.json").read_text())
    attacks = {attack["name"]: attack for attack in record["attacks"]}
    assert list(attacks) == [
        "few_shot=0", "kind=soft_prompt,tokens=2", "kind=latent,epsilon=0", "kind=latent,epsilon=0.5,layers=1",
        "kind=prune,sparsity=0", "kind=prune,sparsity=0.5", "kind=prune,by=change",
        "kind=prompt,template=jailbreak", "kind=prompt,template=expert", "kind=prompt,template=prefill"]
    untouched = attacks["few_shot=0"]["curve"][0]
    assert [row["step"] for row in attacks["kind=soft_prompt,tokens=2"]["curve"]] == [0, 1, 2]
    # Epsilon 0, sparsity 0 and the original's own weights (nothing changed) are the model as it is.
    assert all(row == {**untouched, "step": row["step"]} for row in attacks["kind=latent,epsilon=0"]["curve"])
    assert attacks["kind=prune,sparsity=0"]["curve"] == [untouched]
    assert attacks["kind=prune,by=change"]["curve"] == [untouched]
    assert attacks["kind=prompt,template=prefill"]["settings"]["text"] == TEMPLATES["prefill"]
    assert all(row["testbed_retain"] == untouched["testbed_retain"] for name, attack in attacks.items()
               if name.startswith("kind=prompt") for row in attack["curve"])
    worst = record["worst_case"][0]["testbed_forget"]
    assert worst == max(row["testbed_forget"] for attack in attacks.values() for row in attack["curve"] if row["step"] == 0)


def test_the_attack_seed_is_a_grid_key_recorded_in_each_attacks_name_and_settings(world):
    attacks = grid_attacks(small_config(world), ["tamper.kind=soft_prompt,latent", "tamper.seed=0,1,2"])
    assert [attack.name for attack in attacks] == [f"kind={kind},seed={seed}" for kind in ("soft_prompt", "latent") for seed in (0, 1, 2)]
    assert [attack.description()["settings"]["seed"] for attack in attacks] == [0, 1, 2, 0, 1, 2]


def test_a_dry_run_of_1000_step_attacks_evaluates_sparsely(world, capsys):
    capsys.readouterr()
    assert main(["tamper", world["model"], "--output-dir", str(world["out"]), *SMALL, world["data"], "tamper.few_shot=[]",
                 "tamper.steps=1000", "tamper.eval_every=250", "--grid", "tamper.kind=fine_tune,soft_prompt",
                 "--grid", "tamper.eval_steps=[],[10,100,300]", "--dry-run"]) == 0
    output = capsys.readouterr().out
    assert "kind=fine_tune,eval_steps=10-100-300: fine_tune (" in output and "steps 1000, eval_steps [10, 100, 300]," in output
    # fine-tuning every 250 steps: 4; at 10, 100, 300 and the last: 4; the soft prompt each, with its
    # own step 0: 5 + 5; the shared step 0: 1
    assert "4 attacks: 4 fine-tuning (4000 optimizer steps in all), 0 that train nothing; about 19 evaluations" in output
    assert not world["out"].exists()


def test_an_attack_evaluates_at_its_eval_steps_and_its_last(world):
    model, tokenizer = loaded(world["model"])
    calls = []

    def measure(_):
        calls.append(1)
        return {"evaluation": len(calls)}

    curve = fine_tune.tamper(model, tokenizer, attack_text(tokenizer), adapter="full", lr=1e-4, steps=7, per_device_batch_size=4,
                             eval_every=1, eval_steps=[2, 5], seed=0, measure=measure)
    assert [row["step"] for row in curve] == [0, 2, 5, 7] and [row["evaluation"] for row in curve] == [1, 2, 3, 4]


def test_eval_steps_are_recorded_only_when_set_so_earlier_attack_files_still_resume():
    [plain, sparse] = grid_attacks(load_config(None, ["tamper.few_shot=[]"]), ["tamper.eval_steps=[],[10,50]"])
    assert "eval_steps" not in plain.description()["settings"]
    assert sparse.description()["settings"]["eval_steps"] == [10, 50]


def test_latent_layers_outside_the_model_are_refused_before_anything_loads(world, capsys):
    command = ["tamper", world["model"], "--output-dir", str(world["out"]), *SMALL, world["data"],
               "tamper.grid=[{kind: latent, layers: [0, 5]}]"]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert "attack 'kind=latent,layers=0-5' layers contains layer 5; the model has layers 0..1" in error
    assert error.count("\n") == 1 and not world["out"].exists()
