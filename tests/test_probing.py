"""peel probe: linear probes find a label where a model encodes it and nowhere else; the logit lens
at the last layer is the model's own lm-eval accuracy; probe.json, probe.png and the report table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_tokenizer, tiny_config
from peel.probing.features import read_task
from peel.probing.linear import PROBES, answer_probe, chance, choice_probe, probe_accuracy, question_split
from peel.probing.runner import probe_model
from peel.probing.tasks import ProbeTask, Question

# Digits are single tokens of the test tokenizer (its merges were learnt from words alone).
LABEL_SYMBOLS = ["0", "1", "2", "3"]
DISTRACTORS = ["4", "5", "6", "7", "8", "9"]
READABLE_LAYER = 2


class Relay(nn.Module):
    """A decoder layer that computes nothing: it outputs the token embeddings themselves where
    `shows`, and otherwise the embeddings shifted one position on (each position holds the
    previous token's), so a question's last token is linearly readable at that layer alone."""

    def __init__(self, stash: dict, index: int, shows: bool):
        super().__init__()
        self.stash, self.index, self.shows = stash, index, shows

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:  # the first layer's input is the embeddings
            self.stash["embeddings"] = hidden_states
        embeddings = self.stash["embeddings"]
        return embeddings if self.shows else embeddings.roll(1, dims=1)


def relay_model(num_layers: int = 4):
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt_neox", len(tokenizer), num_layers)).eval()
    stash: dict = {}
    model.gpt_neox.layers = nn.ModuleList(Relay(stash, index, index == READABLE_LAYER) for index in range(num_layers))
    return model, tokenizer


def lettered_task(count: int = 160) -> ProbeTask:
    """Questions whose answer letter is named by their last token; the token before it is noise."""
    generator = np.random.default_rng(0)
    questions = []
    for _ in range(count):
        gold = int(generator.integers(4))
        distractor = DISTRACTORS[int(generator.integers(len(DISTRACTORS)))]
        questions.append(Question(f"{distractor}{LABEL_SYMBOLS[gold]}", (" A", " B", " C", " D"), gold))
    return ProbeTask("lettered", questions)


def test_a_probe_finds_the_label_at_the_one_layer_that_encodes_it_and_chance_elsewhere():
    model, tokenizer = relay_model()
    task = lettered_task()
    assert task.shared_choices  # A-D for every question: the answer's index is the label
    assert all(len(tokenizer(question.context, add_special_tokens=False).input_ids) == 2 for question in task.questions)
    result = probe_model(model, tokenizer, [task], [0, 1, 2, 3], "last", "answer", 0.5, 0, 32, 64)
    accuracy = {row["layer"]: row["lettered"] for row in result["probe"]}
    train, test = question_split(len(task.questions), 0.5, 0)
    level = chance("label", task, train, test)
    assert accuracy[READABLE_LAYER] == 1.0
    for layer in (0, 1, 3):
        assert abs(accuracy[layer] - level) < 0.15, (layer, accuracy, level)


def test_the_split_is_fixed_by_the_seed_and_covers_every_question():
    train, test = question_split(101, 0.5, seed=3)
    again, held_out = question_split(101, 0.5, seed=3)
    assert np.array_equal(train, again) and np.array_equal(test, held_out)
    assert sorted([*train, *test]) == list(range(101)) and len(train) == 50
    assert not np.array_equal(question_split(101, 0.5, seed=4)[0], train)


def cloze_task(count: int = 120, pool: int = 8) -> ProbeTask:
    """Per-question choices from a recurring pool of answers (as in the testbed)."""
    generator = np.random.default_rng(1)
    questions = []
    for index in range(count):
        picks = generator.choice(pool, size=4, replace=False)
        questions.append(Question(f"question {index}", tuple(f" answer{pick}" for pick in picks), int(generator.integers(4))))
    return ProbeTask("cloze", questions)


def test_answer_and_choice_probes_read_what_the_features_hold_and_not_more():
    task = cloze_task()
    assert not task.shared_choices
    train, test = question_split(len(task.questions), 0.5, 0)
    generator = np.random.default_rng(2)
    answers = [int(question.choices[question.gold].removeprefix(" answer")) for question in task.questions]
    # answer probe: one feature direction per answer text, plus noise; and pure noise
    telling = np.eye(8)[answers] * 5 + generator.normal(size=(len(answers), 8))
    noise = generator.normal(size=(len(answers), 8))
    assert answer_probe(telling, task, train, test, 0) > 0.9
    assert answer_probe(noise, task, train, test, 0) < chance("answer", task, train, test) + 0.15
    # choice probe: the answer's row leans one way
    rows = sum(len(question.choices) for question in task.questions)
    correct = np.concatenate([np.arange(4) == question.gold for question in task.questions])
    leaning = generator.normal(size=(rows, 6)) + 4 * correct[:, None] * np.eye(6)[0]
    assert choice_probe(leaning, task, train, test, 0) > 0.9
    assert probe_accuracy("choice", task, generator.normal(size=(rows, 6)), train, test, 0) < 0.25 + 0.15
    assert PROBES["choice"][1] is False and PROBES["answer"][1] is True  # which hidden state each reads


def test_chance_is_the_commonest_label_when_that_beats_one_in_four():
    questions = [Question("q", (" A", " B", " C", " D"), 0 if index % 10 else 1) for index in range(40)]
    task = ProbeTask("skewed", questions)
    train, test = question_split(40, 0.5, 0)
    assert chance("label", task, train, test) == pytest.approx(np.mean([task.questions[i].gold == 0 for i in test]))
    assert chance("choice", cloze_task(), *question_split(120, 0.5, 0)) == 0.25


@pytest.fixture(scope="module")
def testbed_base():
    from peel.models import load_model_and_tokenizer

    return load_model_and_tokenizer("testbed:base", dtype="float32")


def test_the_lens_at_the_last_layer_is_the_models_own_accuracy(testbed_base):
    from peel.evaluation.harness import evaluate
    from peel.probing.lens import lens_accuracy
    from peel.probing.tasks import load_tasks

    model, tokenizer = testbed_base
    (task,) = load_tasks(["testbed_forget"], limit=40)
    assert len(task.questions) == 40 and not task.shared_choices
    readout = read_task(model, tokenizer, task, [7], "last", True, 16, 256)
    expected = evaluate(model, tokenizer, ["testbed_forget"], batch_size=16, max_length=256, limit=40)
    assert lens_accuracy(task, readout.lens_scores[7]) == pytest.approx(expected["accuracy"]["testbed_forget"])


def test_peel_probe_writes_probe_json_and_png_and_the_report_shows_them(tmp_path, capsys):
    from peel.cli import main

    folder = tmp_path / "probes"
    status = main(["probe", "testbed:base", "testbed:filtered", "--tasks", "testbed_forget,testbed_retain",
                   "--output-dir", str(folder), "probe.limit=40", "probe.layers=[1, 7]", "train.dtype=float32"])
    assert status == 0, capsys.readouterr().err
    document = json.loads((folder / "probe.json").read_text())
    assert (folder / "probe.png").stat().st_size > 0
    assert list(document["targets"]) == ["testbed_base", "testbed_filtered"]
    assert document["kinds"] == {"testbed_forget": "answer", "testbed_retain": "answer"}
    assert document["questions"]["testbed_forget"]["train"] == 20 and document["chance"]["testbed_forget"] >= 0.25
    base, filtered = (document["targets"][name] for name in ("testbed_base", "testbed_filtered"))
    assert [row["layer"] for row in base["probe"]] == [1, 7] == [row["layer"] for row in base["logit_lens"]]
    # the base model names the forget answers at its last layer, the filtered one never learnt them
    assert base["logit_lens"][-1]["testbed_forget"] > 0.9 > 0.4 > filtered["logit_lens"][-1]["testbed_forget"]
    assert filtered["logit_lens"][-1]["testbed_retain"] > 0.9

    report = tmp_path / "report.md"
    assert main(["report", str(folder), "--output", str(report)]) == 0
    text = report.read_text()
    assert "| Model | Forget probe | Forget lens | Retain probe | Retain lens |" in text
    best = max(base["probe"], key=lambda row: row["testbed_forget"])
    assert f"| testbed_base | {best['testbed_forget']:.3f} (L{best['layer']}) |" in text
    assert (tmp_path / "report_plots" / "probes_probe.png").is_file()


def test_overrides_may_sit_among_the_targets():
    from peel.cli import parse

    args = parse(["probe", "testbed:base", "probe.layers=[1]", "runs/a", "--output-dir", "out", "probe.seed=2"])
    assert args.targets == ["testbed:base", "runs/a"] and args.output_dir == "out"
    assert args.overrides == ["probe.layers=[1]", "probe.seed=2"]


def test_depth_is_the_original_before_the_changed_layer_and_the_target_from_it_on(testbed_base):
    """A target that differs from its original in one layer's output only: finished by the
    original's later layers, its states before that layer give the original's scores, and from that
    layer on the target's own (the original's later layers are the target's)."""
    import copy

    from peel.anatomy import find_anatomy
    from peel.probing.tasks import load_tasks

    original, tokenizer = testbed_base
    changed = 4
    target = copy.deepcopy(original)
    with torch.no_grad():
        find_anatomy(target).layers[changed].mlp.dense_4h_to_h.bias += torch.randn(
            original.config.hidden_size, generator=torch.Generator().manual_seed(0))
    (task,) = load_tasks(["testbed_forget"], limit=12)
    layers = list(range(8))
    target_readout = read_task(target, tokenizer, task, layers, "last", True, 16, 256, original=original)
    original_scores = read_task(original, tokenizer, task, [7], "last", True, 16, 256).lens_scores[7]
    target_scores = target_readout.lens_scores[7]
    assert not np.allclose(original_scores, target_scores, atol=1e-3)  # the change shows in the output
    for layer in layers:
        expected = original_scores if layer < changed else target_scores
        np.testing.assert_allclose(target_readout.depth_scores[layer], expected, rtol=1e-4, atol=1e-4)


def test_peel_probe_reads_a_run_folders_depth_against_the_model_it_unlearned(tmp_path, capsys):
    from peel.cli import main

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    from peel.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("testbed:base", dtype="float32")
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "config.yaml").write_text("model: {name_or_path: 'testbed:base'}\ntrain: {dtype: float32}\n")
    status = main(["probe", str(run), "testbed:filtered", "--tasks", "testbed_forget", "--output-dir", str(tmp_path / "p"),
                   "probe.limit=12", "probe.layers=[2, 6]"])
    assert status == 0, capsys.readouterr().err
    document = json.loads((tmp_path / "p" / "probe.json").read_text())
    unlearned, filtered = document["targets"]["run"], document["targets"]["testbed_filtered"]
    assert unlearned["original"] == "testbed:base" and "depth" not in filtered
    # the "run" is the original itself: finished by its own later layers, every layer gives its own output
    assert [row["testbed_forget"] for row in unlearned["depth"]] == [unlearned["logit_lens"][-1]["testbed_forget"]] * 2
    assert "depth" in capsys.readouterr().out


def test_the_depth_reader_refuses_an_original_of_another_shape(tmp_path, capsys):
    from peel.cli import main

    from tiny_lm import save_tiny_model

    other = save_tiny_model(tmp_path / "other")
    capsys.readouterr()  # the save's progress bar
    status = main(["probe", "testbed:base", "--tasks", "testbed_forget", "--output-dir", str(tmp_path / "p"),
                   "--baseline", other, "probe.limit=12"])
    assert status == 2
    error = capsys.readouterr().err
    assert "accepted: an original the target was made from" in error and error.count("\n") == 1
    assert not (tmp_path / "p").exists()
