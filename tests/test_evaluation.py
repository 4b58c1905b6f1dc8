"""lm-eval integration: peel's task YAMLs, the in-process adapter, the baseline cache, `peel eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from peel import testbed
from peel.cli import main
from peel.errors import PeelError
from peel.evaluation import cached_baseline, evaluate
from peel.evaluation.harness import task_manager
from tiny_lm import save_tiny_model, tiny_model, tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "evaluation"
WMDP_SUBSETS = [
    "bioweapons_and_bioterrorism",
    "dual_use_virology",
    "enhanced_potential_pandemic_pathogens",
    "expanding_access_to_threat_vectors",
    "reverse_genetics_and_easy_editing",
    "viral_vector_research",
]
WMDP_PROMPT = (
    "The following are multiple choice questions (with answers) about biology.\n\n"
    "Which organelle holds most of a plant cell's chlorophyll?\n"
    "A. Nucleus\nB. Chloroplast\nC. Ribosome\nD. Vacuole\nAnswer:"
)


@pytest.fixture
def testbed_fixtures(monkeypatch):
    """Point the testbed tasks at the small question sets shipped with the tests."""
    monkeypatch.setitem(testbed.MC_FILES, "testbed_forget", str(FIXTURES / "forget_mc.jsonl"))
    monkeypatch.setitem(testbed.MC_FILES, "testbed_retain", str(FIXTURES / "retain_mc.jsonl"))


@pytest.fixture
def fake_hub(monkeypatch):
    """Serve hub datasets from the sample documents: subset i of WMDP gets i + 1 copies."""
    import datasets

    requests = []

    def load_dataset(path, name=None, **_kwargs):
        requests.append((path, name))
        if path == "EleutherAI/wmdp_bio_robust_mcqa":
            sample = json.loads((FIXTURES / "wmdp_bio_robust_sample.json").read_text())
            rows = [sample] * (WMDP_SUBSETS.index(name) + 1)
            return datasets.DatasetDict({"robust": datasets.Dataset.from_list(rows)})
        if path == "EleutherAI/wmdp_bio_cloze":
            sample = json.loads((FIXTURES / "wmdp_bio_robust_sample.json").read_text())
            return datasets.DatasetDict({"cloze_compatible": datasets.Dataset.from_list([sample])})
        if path == "cais/mmlu":
            sample = json.loads((FIXTURES / "mmlu_sample.json").read_text())
            split = datasets.Dataset.from_list([sample])
            return datasets.DatasetDict({"test": split, "dev": split, "validation": split})
        raise AssertionError(f"unexpected dataset {path}")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return requests


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


def choice_log_likelihood(model, tokenizer, prompt: str, choice: str) -> float:
    """Sum of log-probabilities of the choice's tokens after the prompt: the cloze score."""
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    continuation = tokenizer(prompt + choice, add_special_tokens=False)["input_ids"][len(context):]
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        log_probs = model(ids).logits.log_softmax(-1)[0]
    return sum(log_probs[len(context) + index - 1, token].item() for index, token in enumerate(continuation))


def test_testbed_tasks_score_each_choice_as_a_continuation(model, tokenizer, testbed_fixtures):
    results = evaluate(model, tokenizer, ["testbed_forget", "testbed_retain"], batch_size=4, max_length=128)

    for task, name in [("testbed_forget", "forget_mc.jsonl"), ("testbed_retain", "retain_mc.jsonl")]:
        rows = [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]
        correct, probability = 0, 0.0
        for row in rows:
            scores = [choice_log_likelihood(model, tokenizer, row["prompt"], choice) for choice in row["choices"]]
            correct += int(max(range(4), key=scores.__getitem__) == row["answer"])
            probability += torch.tensor(scores).softmax(0)[row["answer"]].item()
        assert results["accuracy"][task] == pytest.approx(correct / len(rows))
        assert results["correct_prob"][task] == pytest.approx(probability / len(rows), rel=1e-5)
        assert results["details"][task]["samples"] == len(rows)
    assert results["num_fewshot"] == 0 and results["lm_eval_version"]


def test_evaluation_leaves_training_mode_and_random_state_alone(model, tokenizer, testbed_fixtures):
    model.train()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    evaluate(model, tokenizer, ["testbed_forget"], batch_size=4, max_length=128, limit=2)
    assert torch.equal(torch.rand(3), expected)
    assert model.training
    model.eval()


def test_evaluation_outside_a_git_checkout_prints_no_git_error(model, tokenizer, testbed_fixtures, tmp_path, monkeypatch, capfd):
    """lm-eval asks git for the working directory's commit with the terminal as git's stderr; run
    anywhere but a checkout, each evaluation printed "fatal: not a git repository"."""
    outside = tmp_path / "not_a_checkout"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git may not look above it
    capfd.readouterr()
    evaluate(model, tokenizer, ["testbed_forget"], batch_size=4, max_length=128, limit=2)
    assert "not a git repository" not in capfd.readouterr().err


def test_few_shot_examples_come_from_their_own_split_and_never_hold_the_question(model, tokenizer, testbed_fixtures):
    from peel.evaluation.local_data import read_multiple_choice

    loaded = task_manager(include_defaults=False).load(["testbed_forget", "testbed_retain"])["tasks"]
    part_b = {row["prompt"] for row in read_multiple_choice(testbed.FEWSHOT_FILES["testbed_forget"])}
    for document in loaded["testbed_forget"].test_docs():  # examples: part B questions, answered
        *shots, question = loaded["testbed_forget"].fewshot_context(document, num_fewshot=3).split("\n\n")
        assert question == document["prompt"] and len(shots) == 3
        assert all(any(shot.startswith(prompt + " ") for prompt in part_b) for shot in shots)
    retain = loaded["testbed_retain"]
    rows = list(retain.test_docs())
    for document in rows:  # examples from the same four questions: the other three, never the one asked
        *shots, question = retain.fewshot_context(document, num_fewshot=3).split("\n\n")
        assert set(shots) == {row["prompt"] + row["choices"][row["answer"]] for row in rows if row != document}

    # lm-eval ignores a requested count for a task whose YAML fixes 0: peel's YAMLs leave it open.
    results = evaluate(model, tokenizer, ["testbed_forget", "testbed_retain"], batch_size=4, max_length=256, num_fewshot=2)
    assert results["num_fewshot"] == 2


def test_wmdp_bio_robust_group_renders_the_wmdp_prompt(fake_hub):
    loaded = task_manager(include_defaults=False).load(["wmdp_bio_robust"])
    assert sorted(loaded["tasks"]) == sorted(f"wmdp_bio_robust_{subset}" for subset in WMDP_SUBSETS)
    assert sorted(name for _, name in fake_hub) == sorted(WMDP_SUBSETS)
    task = loaded["tasks"]["wmdp_bio_robust_dual_use_virology"]
    document = task.test_docs()[0]
    assert task.fewshot_context(document, num_fewshot=0) == WMDP_PROMPT
    assert task.doc_to_choice(document) == ["A", "B", "C", "D"]
    assert task.doc_to_target(document) == 1


def test_wmdp_bio_robust_accuracy_is_weighted_by_subset_size(model, tokenizer, fake_hub):
    results = evaluate(model, tokenizer, ["wmdp_bio_robust"], batch_size=8, max_length=128)
    details = results["details"]
    subsets = [f"wmdp_bio_robust_{subset}" for subset in WMDP_SUBSETS]
    sizes = [details[name]["samples"] for name in subsets]
    assert sizes == [1, 2, 3, 4, 5, 6]
    assert details["wmdp_bio_robust"]["samples"] == 21
    weighted = sum(details[name]["accuracy"] * size for name, size in zip(subsets, sizes)) / 21
    assert results["accuracy"]["wmdp_bio_robust"] == pytest.approx(weighted)


def test_correct_prob_of_a_group_is_the_mean_over_its_documents(model, tokenizer, fake_hub):
    details = evaluate(model, tokenizer, ["wmdp_bio_robust"], batch_size=8, max_length=128)["details"]
    subsets = [f"wmdp_bio_robust_{subset}" for subset in WMDP_SUBSETS]
    weighted = sum(details[name]["correct_prob"] * details[name]["samples"] for name in subsets) / 21
    assert details["wmdp_bio_robust"]["correct_prob"] == pytest.approx(weighted)
    assert 0 < weighted < 1


def test_cloze_wmdp_tasks_score_answers_as_continuations(model, tokenizer, fake_hub):
    loaded = task_manager(include_defaults=False).load(["wmdp_bio_cloze"])
    task = loaded["tasks"]["wmdp_bio_cloze"]
    document = task.test_docs()[0]
    assert task.fewshot_context(document, num_fewshot=0) == "Question: Which organelle holds most of a plant cell's chlorophyll?\nAnswer:"
    assert task.doc_to_choice(document) == ["Nucleus", "Chloroplast", "Ribosome", "Vacuole"]
    results = evaluate(model, tokenizer, ["wmdp_bio_cloze", "wmdp_bio_cloze_correct_prob"], batch_size=4, max_length=128)
    assert results["details"]["wmdp_bio_cloze"]["metric"] == "acc_norm"
    # The task that reports correct_prob as lm-eval's own metric agrees with peel's reading of the samples.
    assert results["accuracy"]["wmdp_bio_cloze_correct_prob"] == pytest.approx(results["correct_prob"]["wmdp_bio_cloze"])
    scores = [choice_log_likelihood(model, tokenizer, "Question: Which organelle holds most of a plant cell's chlorophyll?\nAnswer:", " " + choice)
              for choice in ["Nucleus", "Chloroplast", "Ribosome", "Vacuole"]]
    assert results["correct_prob"]["wmdp_bio_cloze"] == pytest.approx(torch.tensor(scores).softmax(0)[1].item(), rel=1e-5)


def test_mmlu_is_lm_evals_own_group_with_the_same_prompt_format(fake_hub):
    loaded = task_manager(include_defaults=True).load(["mmlu"])
    assert len(loaded["tasks"]) == 57
    task = loaded["tasks"]["mmlu_anatomy"]
    document = task.test_docs()[0]
    assert task.fewshot_context(document, num_fewshot=0) == (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "Which bone protects the brain?\nA. Femur\nB. Skull\nC. Rib\nD. Tibia\nAnswer:"
    )


def test_unknown_task_is_a_clear_error(model, tokenizer):
    with pytest.raises(PeelError, match="unknown evaluation task 'no_such_task'"):
        evaluate(model, tokenizer, ["no_such_task"], batch_size=4, max_length=128)


def test_baseline_cache_computes_once_per_model_and_task_set(tmp_path, monkeypatch):
    monkeypatch.setenv("PEEL_CACHE", str(tmp_path / "cache"))
    folder = save_tiny_model(tmp_path / "model")
    calls = []

    def compute():
        calls.append(1)
        return {"accuracy": {"testbed_forget": 0.5}}

    for _ in range(2):
        assert cached_baseline(folder, ["testbed_forget"], None, 128, compute)["accuracy"] == {"testbed_forget": 0.5}
    assert len(calls) == 1
    cached_baseline(folder, ["testbed_forget", "testbed_retain"], None, 128, compute)
    assert len(calls) == 2  # another task set
    (Path(folder) / "config.json").touch()
    os.utime(Path(folder) / "config.json", ns=(1, 1))
    cached_baseline(folder, ["testbed_forget"], None, 128, compute)
    assert len(calls) == 3  # the model folder changed


def test_peel_eval_on_a_run_folder_writes_eval_json(tmp_path, testbed_fixtures, monkeypatch, capsys):
    monkeypatch.setenv("PEEL_CACHE", str(tmp_path / "cache"))
    original = save_tiny_model(tmp_path / "original")
    run = tmp_path / "run"
    save_tiny_model(run / "model")
    config = {"model": {"name_or_path": original}, "train": {"dtype": "float32"}, "eval": {"batch_size": 4, "max_length": 128}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    assert main(["eval", str(run), "--tasks", "testbed_forget,testbed_retain", "--baseline"]) == 0
    record = json.loads((run / "eval.json").read_text())
    assert record["model"] == str(run / "model")
    assert set(record["accuracy"]) == {"testbed_forget", "testbed_retain"}
    assert record["baseline"]["model"] == original
    assert set(record["baseline"]["accuracy"]) == {"testbed_forget", "testbed_retain"}
    assert "testbed_forget:" in capsys.readouterr().out


def test_missing_dataset_offline_is_a_one_line_error(tmp_path):
    folder = save_tiny_model(tmp_path / "model")
    environment = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "peel", "eval", folder, "train.dtype=float32", "--tasks", "wmdp_bio_robust",
         "--output-dir", str(tmp_path / "out")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2, completed.stderr
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("peel eval: error:") and "EleutherAI/wmdp_bio_robust_mcqa" in last_line
    assert "Traceback" not in completed.stderr


@pytest.mark.skipif(not Path(testbed.MC_FILES["testbed_forget"]).is_file(), reason="testbed artifacts not built")
def test_shipped_testbed_model_on_shipped_testbed_tasks():
    from peel.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("testbed:base")
    results = evaluate(model, tokenizer, ["testbed_forget", "testbed_retain"], batch_size=16, max_length=256, limit=40)
    assert {name: entry["samples"] for name, entry in results["details"].items()} == {"testbed_forget": 40, "testbed_retain": 40}
    # The base model was pretrained on both domains: it should beat chance (0.25) clearly on each.
    assert min(results["accuracy"].values()) > 0.5


def test_eval_help_lists_every_task_peel_ships(capsys):
    from peel.evaluation.harness import peel_task_names

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    shown = capsys.readouterr().out
    headline = sorted(name for name in peel_task_names() if "_robust_" not in name)  # not the six WMDP subsets
    assert "wmdp_bio_cloze_correct_prob" in headline
    assert [name for name in headline if name not in shown] == []
    assert "eval.include_path" in shown
