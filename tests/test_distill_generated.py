"""distill.data: generated: texts the original model writes, sampled once (seeded) and cached in the
run folder, texts with a forget keyword dropped; with the option off, peel distill is what it was."""

from __future__ import annotations

import json

import pytest

import peel.generation
from peel.errors import PeelError
from peel.distill import distill, prepare

from test_distill import distill_config, metrics, run  # noqa: F401 (run is a fixture)

GENERATED = ["distill.data=generated", "distill.generated.num_texts=10", "distill.generated.max_new_tokens=6",
             "distill.generated.prompt_tokens=3", "distill.generated.batch_size=4"]


def test_the_default_text_gives_the_distillation_it_gave_before_the_option(run, tmp_path):
    # Measured with the code before distill.data: generated existed (commit 51ce547), same settings.
    folder = distill(distill_config(run, tmp_path / "plain", "distill.alpha=0.5", "distill.steps=3", "distill.num_examples=12"))
    assert [r["distill_loss"] for r in metrics(folder)] == pytest.approx(
        [0.0005484877619892359, 0.0005300793563947082, 0.01135734748095274], rel=1e-6)
    assert [r["grad_norm"] for r in metrics(folder)] == pytest.approx(
        [0.04774659126996994, 0.046363815665245056, 0.07827656716108322], rel=1e-6)
    assert not (folder / "generated.json").exists()
    assert "generated_texts" not in json.loads((folder / "run.json").read_text())


def test_generated_text_is_sampled_once_seeded_cached_and_trained_on(run, tmp_path, monkeypatch):
    config = distill_config(run, tmp_path / "generated", *GENERATED, "distill.steps=2", "distill.alpha=0.5")
    prepared = prepare(config)
    assert len(prepared.prompts) == 10 and prepared.examples == []
    assert all(1 <= len(ids) <= 3 for ids in prepared.prompts)
    folder = distill(config)
    document = json.loads((folder / "generated.json").read_text())
    assert len(document["texts"]) == 10 and document["dropped"] == 0
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "completed" and record["generated_texts"] == 10 and record["generated_dropped"] == 0
    assert len(metrics(folder)) == 2

    # The same settings elsewhere sample the same texts; run again here, the cache is read, nothing sampled.
    again = distill(distill_config(run, tmp_path / "again", *GENERATED, "distill.steps=2", "distill.alpha=0.5"))
    assert json.loads((again / "generated.json").read_text())["texts"] == document["texts"]
    assert metrics(again) == metrics(folder)
    monkeypatch.setattr(peel.generation, "sample", lambda *args, **kwargs: pytest.fail("sampled again"))
    from peel.cli import main

    assert main(["distill", str(run), "--output-dir", str(folder), "--force", *GENERATED, "distill.steps=2",
                 "distill.alpha=0.5", "distill.per_device_batch_size=4", "distill.global_batch_size=8", "distill.lr=1e-2"]) == 0
    assert metrics(folder) == metrics(again)

    # Other sampling settings are another cache: sampled anew.
    monkeypatch.undo()
    hotter = distill(distill_config(run, tmp_path / "generated", *GENERATED, "distill.generated.temperature=3", "distill.steps=2",
                                    "distill.alpha=0.5"), force=True)
    assert json.loads((hotter / "generated.json").read_text())["texts"] != document["texts"]


def test_texts_with_a_forget_keyword_are_dropped(run, tmp_path):
    texts = ["the virus spreads", "salt and grain", "a Virus host", "wool"]
    assert peel.generation.outside(texts, None) == texts
    from peel.unlearning.masks import keyword_pattern

    assert peel.generation.outside(texts, keyword_pattern(["virus", "host"])) == ["salt and grain", "wool"]

    keywords = tmp_path / "keywords.txt"
    keywords.write_text("tow\n")  # every retain text opens with "town" (its first 3 tokens: "tow"): the 64 texts they prompt go
    folder = distill(distill_config(run, tmp_path / "filtered", *GENERATED, "distill.generated.num_texts=72", "distill.steps=1",
                                    f"data.forget.keywords={keywords}"))
    document = json.loads((folder / "generated.json").read_text())
    assert document["dropped"] >= 64 and len(document["texts"]) + document["dropped"] == 72 and document["texts"]
    assert not any("tow" in text.lower() for text in document["texts"])

    with pytest.raises(PeelError, match="every one of the 10 generated texts holds a forget keyword"):
        distill(distill_config(run, tmp_path / "all_dropped", *GENERATED, "distill.steps=1", f"data.forget.keywords={keywords}"))
