"""Regenerate the whole testbed into a folder: world, corpora, questions, tokenizer, two models.

Deterministic from the seed: the world and questions come from seeded `random.Random`s and each
model trains single-threaded from its own torch seed.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from peel.testbed import questions, world
from peel.testbed.pretrain import ModelShape, Schedule, pretrain
from peel.testbed.tokenizer import train_tokenizer

VOCAB_SIZE = 1024


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def build_testbed(output_dir: str | Path, seed: int = 0, steps: int = Schedule.steps,
                  entities_per_domain: int = 100, parallel: bool = True) -> dict:
    """Write every artifact under `output_dir` and return a summary (also saved as build.json)."""
    started = time.time()
    output = Path(output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)

    entities = world.generate_world(seed, entities_per_domain)
    forget = world.corpus(entities, {"A"}, seed + 1)
    tamper = world.corpus(entities, {"B"}, seed + 2)
    retain = world.corpus(entities, {"retain"}, seed + 3)
    (output / "world.json").write_text(json.dumps({"seed": seed, "entities": world.to_json(entities)}, indent=1))
    for name, texts in (("forget", forget), ("tamper", tamper), ("retain", retain)):
        write_jsonl(output / f"{name}.jsonl", [{"text": text} for text in texts])
    (output / "keywords.txt").write_text(world.keyword_list())

    tokenizer = train_tokenizer(forget + tamper + retain, VOCAB_SIZE)
    tokenizer.save_pretrained(output / "tokenizer")
    count_tokens = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    # tamper_mc: questions about part B, only ever few-shot examples for testbed_forget.
    for name, part, question_seed in (("forget", "A", seed + 4), ("retain", "retain", seed + 5), ("tamper", "B", seed + 6)):
        items = world.cloze_items(entities, part, question_seed)
        write_jsonl(output / f"{name}_mc.jsonl", questions.multiple_choice(items, count_tokens, question_seed))

    # base reads everything; filtered reads everything except the forget domain (A and B).
    shape, schedule = ModelShape(), Schedule(steps=steps)
    jobs = {
        "base": (forget + tamper + retain, seed + 10),
        "filtered": (retain, seed + 11),
    }
    arguments = {name: (texts, str(output / "tokenizer"), str(output / name), shape, schedule, model_seed)
                 for name, (texts, model_seed) in jobs.items()}
    if parallel:
        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
            futures = {name: pool.submit(pretrain, *args) for name, args in arguments.items()}
            results = {name: future.result() for name, future in futures.items()}
    else:
        results = {name: pretrain(*args) for name, args in arguments.items()}

    summary = {"seed": seed, "steps": steps, "entities_per_domain": entities_per_domain,
               "documents": {"forget": len(forget), "tamper": len(tamper), "retain": len(retain)},
               "models": results, "wall_seconds": round(time.time() - started, 1)}
    (output / "build.json").write_text(json.dumps(summary, indent=1))
    return summary
