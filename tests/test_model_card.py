"""The README.md model card peel writes into a run's adapter/ and model/, in place of peft's blank
template, and rewrites when peel eval or peel tamper add results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peel.attacks.results import document, write_tamper
from peel.cli import main
from peel.config import load_config, save_config
from peel.runs.evaluations import write_evaluation
from peel.outputs.model_card import card_text, hub_id, shown, write_model_cards
from test_include_path import QUESTIONS, write_user_task


@pytest.fixture(scope="module")
def run(tiny_models, corpora, tmp_path_factory) -> Path:
    """A finished LoRA run on a tiny model (about a second), through `peel unlearn`, which writes the cards."""
    folder = tmp_path_factory.mktemp("card") / "run"
    config_file = folder.parent / "config.yaml"
    save_config(load_config(None, [
        f"model.name_or_path={tiny_models['gpt_neox']}", f"data.forget.path={corpora['forget']}",
        f"data.retain.path={corpora['retain']}", "data.num_examples=8", "data.max_length=16",
        "train.global_batch_size=4", "train.per_device_batch_size=4", "train.dtype=float32", "unlearn.layers=[3, 1]",
        "unlearn.remove_coef=30", f"output_dir={folder}", "notes=card test",
    ]), config_file)
    assert main(["unlearn", str(config_file)]) == 0
    return folder


def test_the_adapter_card_replaces_pefts_template_and_names_no_absolute_path(run, tiny_models):
    card = (run / "adapter" / "README.md").read_text()
    assert "[More Information Needed]" not in card  # peft's template is gone
    assert str(tiny_models["gpt_neox"]) not in card and str(run) not in card and "/tmp" not in card
    assert f"# {Path(tiny_models['gpt_neox']).name}, unlearned by peel" in card
    assert "library_name: peft" in card and "base_model:" not in card  # a local base has no hub id
    assert "| target layers, back to front | 3, 1 |" in card
    assert "| forget loss | random_ce, coefficient 30.0 |" in card
    assert "Not evaluated yet" in card and "Not attacked yet" in card
    model_card = (run / "model" / "README.md").read_text()
    assert "library_name: transformers" in model_card and "adapters merged" in model_card


def test_peel_eval_on_the_run_rewrites_the_cards_with_its_accuracies(run, tmp_path):
    tasks = write_user_task(tmp_path / "tasks")
    assert main(["eval", str(run), "--tasks", "my_facts", f"eval.include_path={tasks}"]) == 0
    accuracy = json.loads((run / "eval.json").read_text())["accuracy"]["my_facts"]
    for folder in ("adapter", "model"):
        card = (run / folder / "README.md").read_text()
        assert f"| my_facts | n/a | {accuracy:.4f} |" in card
        assert "Not evaluated yet" not in card and str(tasks) not in card
    assert len(QUESTIONS) == json.loads((run / "eval.json").read_text())["details"]["my_facts"]["samples"]


def test_tamper_results_and_a_baseline_reach_the_card(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    write_evaluation(copy, "model", {"accuracy": {"forget": 0.30, "retain": 0.60}},
                     {"accuracy": {"forget": 0.50, "retain": 0.62}})
    curve = [{"step": 0, "forget": 0.30, "retain": 0.60}, {"step": 10, "forget": 0.45, "retain": 0.61}]
    write_tamper(copy, document("model", ["forget", "retain"], [{"name": "lr_2e-4", "kind": "fine_tune",
                                                                  "settings": {}, "curve": curve}], None))
    assert write_model_cards(copy) == [copy / "adapter" / "README.md", copy / "model" / "README.md"]
    card = (copy / "adapter" / "README.md").read_text()
    assert "| forget | 0.5000 | 0.3000 |" in card and "| retain | 0.6200 | 0.6000 |" in card
    # Recovery against the baseline eval.json holds: half of the lost 0.2 is back by step 10.
    assert "| forget | 0.3000 | 0.4500 | lr_2e-4, 10 | 50: 10, 90: n/a |" in card


def test_hub_ids_are_named_and_local_paths_shortened(tmp_path):
    assert hub_id("EleutherAI/deep-ignorance-unfiltered") == "EleutherAI/deep-ignorance-unfiltered"
    assert hub_id(str(tmp_path)) is None and hub_id("testbed:base") is None
    assert shown(str(tmp_path / "models" / "base")) == "base" and shown("testbed:forget") == "testbed:forget"
    text = card_text("adapter", {"model": {"name_or_path": "EleutherAI/deep-ignorance-unfiltered"},
                                 "unlearn": {"adapter": "lora", "lora": {"rank": 16, "alpha": 16, "target_modules": ["query_key_value"]}}},
                     {"layers": [31, 27]}, None, None)
    assert text.startswith("---\nbase_model: EleutherAI/deep-ignorance-unfiltered\n")
    assert "LoRA rank 16, alpha 16, modules ['query_key_value']" in text


def test_peel_tamper_on_the_run_rewrites_the_cards_with_its_attacks(run, tmp_path):
    from tiny_lm import TEXTS

    tasks = write_user_task(tmp_path / "tasks")
    attack_text = tmp_path / "attack.jsonl"
    attack_text.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    assert main([
        "tamper", str(run), f"eval.include_path={tasks}", f"tamper.data.path={attack_text}", "tamper.tasks=[my_facts]",
        "tamper.grid=[]", "tamper.few_shot=[]", "tamper.steps=1", "tamper.eval_every=1", "tamper.per_device_batch_size=2",
        "tamper.max_length=16", "tamper.dtype=float32",
    ]) == 0
    summary = json.loads((run / "tamper.json").read_text())["summary"]["my_facts"]
    card = (run / "adapter" / "README.md").read_text()
    assert f"| my_facts | {summary['step0']:.4f} | {summary['worst']:.4f} | attack, {summary['worst_step']} |" in card
    assert "1 attack(s): attack (tamper.json)." in card


def test_the_loading_line_names_a_hub_base_and_a_placeholder_otherwise():
    lora = {"unlearn": {"adapter": "lora", "lora": {}}}
    hub = card_text("adapter", {"model": {"name_or_path": "EleutherAI/deep-ignorance-unfiltered"}, **lora}, None, None, None)
    assert 'AutoModelForCausalLM.from_pretrained("EleutherAI/deep-ignorance-unfiltered"), "adapter")' in hub
    scenario = card_text("adapter", {"model": {"name_or_path": "testbed:base"}, **lora}, None, None, None)
    assert 'from_pretrained("<the folder of testbed:base>")' in scenario
