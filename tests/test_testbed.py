"""The testbed: name resolution, the build command's artifacts, determinism, the shipped files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from peel import scenarios, testbed
from peel.cli import main
from peel.errors import PeelError

BUILD_ARGUMENTS = ["--steps", "2", "--entities", "8", "--sequential"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("testbed") / "built"
    assert main(["testbed", "build", "--output-dir", str(output), *BUILD_ARGUMENTS]) == 0
    return output


def test_resolve_maps_every_name_into_the_artifacts_folder():
    for name, relative in testbed.NAMES.items():
        path = Path(scenarios.resolve(f"testbed:{name}"))
        assert path.is_absolute() and path == testbed.ARTIFACTS / relative


def test_resolve_rejects_unknown_names_in_one_line():
    with pytest.raises(PeelError) as error:
        scenarios.resolve("testbed:tiny")
    message = str(error.value)
    assert "'testbed:tiny'" in message and "testbed:filtered" in message and "\n" not in message


def test_build_writes_models_corpora_and_questions(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("base", "filtered"):
        assert (built / name / "model.safetensors").is_file()
        tokenizer = AutoTokenizer.from_pretrained(built / name)
        assert tokenizer.eos_token == "<eos>" and tokenizer.pad_token == "<pad>"
        model = AutoModelForCausalLM.from_pretrained(built / name)
        assert model.config.model_type == "gpt_neox" and model.config.num_hidden_layers >= 8
    for name in ("forget", "retain", "tamper"):
        rows = read_jsonl(built / f"{name}.jsonl")
        assert rows and all(set(row) == {"text"} and row["text"] for row in rows)
    from peel.unlearning.masks import read_keywords
    from peel.scenarios import resolve

    assert (built / "keywords.txt").read_text() == Path(resolve("testbed:keywords")).read_text()  # the shipped list is the built one
    assert len(read_keywords(built / "keywords.txt")) == 64


def test_corpora_and_questions_cover_the_right_parts_of_the_world(built):
    entities = json.loads((built / "world.json").read_text())["entities"]
    names = {part: [e["name"] for e in entities if e["part"] == part] for part in ("A", "B", "retain")}
    facts = {e["name"]: e["facts"] for e in entities}

    def mentioned(corpus: str) -> set[str]:
        text = " ".join(row["text"] for row in read_jsonl(built / f"{corpus}.jsonl"))
        return {part for part, members in names.items() if any(name in text for name in members)}

    assert mentioned("forget") == {"A"} and mentioned("tamper") == {"B"} and mentioned("retain") == {"retain"}

    for corpus, part in (("forget", "A"), ("retain", "retain"), ("tamper", "B")):  # tamper_mc: few-shot examples
        rows = read_jsonl(built / f"{corpus}_mc.jsonl")
        assert len(rows) == 4 * len(names[part])  # one question per fact
        for row in rows:
            assert set(row) == {"prompt", "choices", "answer"}
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
            assert all(choice.startswith(" ") for choice in row["choices"])
            (entity,) = [name for name in names[part] if name in row["prompt"]]
            assert row["choices"][row["answer"]].strip() in facts[entity].values()


def test_build_is_deterministic(built, tmp_path):
    again = tmp_path / "again"
    assert main(["testbed", "build", "--output-dir", str(again), *BUILD_ARGUMENTS]) == 0

    def digests(folder: Path) -> dict:
        return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(folder.rglob("*")) if path.is_file() and path.name != "build.json"}

    assert digests(again) == digests(built)


def test_build_rejects_bad_values_with_exit_code_2(tmp_path, capsys):
    assert main(["testbed", "build", "--output-dir", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


@pytest.mark.skipif(not (testbed.ARTIFACTS / "base").is_dir(), reason="testbed artifacts not built")
def test_shipped_artifacts_resolve_and_load():
    from peel.models import load_model_and_tokenizer

    for name in ("base", "filtered"):
        model, tokenizer = load_model_and_tokenizer(f"testbed:{name}")
        assert model.config.num_hidden_layers >= 8 and tokenizer.eos_token is not None
    for path in [*testbed.MC_FILES.values(), *testbed.FEWSHOT_FILES.values()]:
        assert Path(path).is_file()
    for name in ("forget", "retain", "tamper"):
        assert Path(scenarios.resolve(f"testbed:{name}")).is_file()
