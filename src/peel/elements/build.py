"""Regenerate the elements scenario into a folder: facts the model knows, corpora, questions.

Deterministic given the packages' data and the model: facts come in a fixed order, every random
choice comes from a seeded `random.Random`, and the model's answers are float32 log-probabilities.

1. Read every element and country fact from the packages (`facts`).
2. Ask the model each fact in all four phrasings, with distractors drawn once for this check; keep
   the facts it answers in every phrasing (`known`), and the entities with at least one.
3. Split the elements alternately, in atomic-number order, into part A and part B; take a seeded
   sample of the known countries with about `RETAIN_FACTS` facts.
4. Write the text (forget = part A, tamper = part B, retain = countries) and the evaluation
   questions (part A's facts and the countries' facts, one question each in a random phrasing,
   with distractors drawn afresh), and build.json with counts and the length-only guessers.
"""

from __future__ import annotations

import json
import random
import time
from importlib import metadata
from pathlib import Path

from peel.elements import facts, world
from peel.testbed.questions import length_guesser_accuracy, multiple_choice

PACKAGES = ("periodictable", "countryinfo", "pycountry")
# The retain set is a seeded sample of the known countries holding about this many facts: every
# evaluation scores each question's four options, and on 2 CPU cores that time is the demo's.
RETAIN_FACTS = 160


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def known(domain: str, entities: list[dict], pool: dict, measure, ask, seed: int) -> list[dict]:
    """`entities` with only the facts `ask` answers correctly in every phrasing (entities left
    without any fact are dropped). `ask(rows)` returns one bool per multiple-choice row."""
    items = world.cloze_items(domain, entities, pool, list(range(world.PHRASINGS)), seed)
    correct = ask(multiple_choice(items, measure, seed))
    misses = {(item["entity"], item["attribute"]) for item, right in zip(items, correct) if not right}
    kept = []
    for entity in entities:
        facts_known = {attribute: value for attribute, value in entity["facts"].items() if (entity["name"], attribute) not in misses}
        if facts_known:
            kept.append({**entity, "facts": facts_known})
    return kept


def sample(entities: list[dict], facts_wanted: int, seed: int) -> list[dict]:
    """Entities in a seeded random order until they hold `facts_wanted` facts, in their original order."""
    order = list(range(len(entities)))
    random.Random(seed).shuffle(order)
    chosen, count = [], 0
    for index in order:
        if count >= facts_wanted:
            break
        chosen.append(index)
        count += len(entities[index]["facts"])
    return [entities[index] for index in sorted(chosen)]


def questions(domain: str, entities: list[dict], pool: dict, measure, seed: int) -> list[dict]:
    return multiple_choice(world.cloze_items(domain, entities, pool, None, seed), measure, seed)


def scenario_files(elements: list[dict], countries: list[dict], measure, ask, seed: int) -> dict:
    """Everything `build_elements` writes, as data: {"facts", "forget", "tamper", "retain",
    "forget_mc", "retain_mc"}. Pure given `measure` (text -> length) and `ask` (rows -> answers)."""
    element_pool, country_pool = world.pools(elements), world.pools(countries)
    known_elements = known("element", elements, element_pool, measure, ask, seed + 1)
    known_countries = sample(known("country", countries, country_pool, measure, ask, seed + 2), RETAIN_FACTS, seed + 8)
    part_a, part_b = known_elements[0::2], known_elements[1::2]
    # Distractors come from the whole field (every element or country the package lists), so a
    # question's wrong options are not limited to what the model happens to know.
    return {
        "facts": {"A": part_a, "B": part_b, "retain": known_countries},
        "forget": world.corpus("element", part_a, seed + 3),
        "tamper": world.corpus("element", part_b, seed + 4),
        "retain": world.corpus("country", known_countries, seed + 5),
        "forget_mc": questions("element", part_a, element_pool, measure, seed + 6),
        "retain_mc": questions("country", known_countries, country_pool, measure, seed + 7),
    }


def build_elements(output_dir: str | Path, model_name: str = "smollm2-135m", seed: int = 0, batch_size: int = 64) -> dict:
    """Write the scenario's artifacts under `output_dir` and return a summary (also build.json)."""
    from peel.elements.knowledge import answered
    from peel.models import load_model_and_tokenizer

    started = time.time()
    output = Path(output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model_and_tokenizer(model_name, dtype="float32")

    def measure(text: str) -> tuple[int, int]:  # tokens, then characters
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]), len(text)

    files = scenario_files(facts.elements(), facts.countries(), measure,
                           lambda rows: answered(model, tokenizer, rows, batch_size), seed)
    (output / "facts.json").write_text(json.dumps({"seed": seed, "model": model_name, **files["facts"]}, indent=1) + "\n")
    for name in ("forget", "tamper", "retain"):
        write_jsonl(output / f"{name}.jsonl", [{"text": text} for text in files[name]])
    for name in ("forget_mc", "retain_mc"):
        write_jsonl(output / f"{name}.jsonl", files[name])

    tokens = lambda text: measure(text)[0]  # noqa: E731
    guessers = {
        name: {f"{pick.__name__}_{unit}": round(length_guesser_accuracy(files[name], length, pick), 4)
               for unit, length in (("tokens", tokens), ("characters", len)) for pick in (min, max)}
        for name in ("forget_mc", "retain_mc")
    }
    summary = {
        "seed": seed, "model": model_name,
        "packages": {name: metadata.version(name) for name in PACKAGES},
        "entities": {part: len(rows) for part, rows in files["facts"].items()},
        "facts": {part: sum(len(entity["facts"]) for entity in rows) for part, rows in files["facts"].items()},
        "documents": {name: len(files[name]) for name in ("forget", "tamper", "retain")},
        "questions": {name: len(files[name]) for name in ("forget_mc", "retain_mc")},
        "length_only_guessers": guessers,
        "wall_seconds": round(time.time() - started, 1),
    }
    (output / "build.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
