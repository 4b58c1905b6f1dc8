"""Sentences, documents and cloze questions about the elements and the countries.

Like the testbed's world: every fact is written in four phrasings, each ending with the fact's
value so that the text before it is a cloze prompt; documents hold all of an entity's facts in one
phrasing, plus two paragraphs mixing phrasings. Pure Python: no model, no torch.
"""

from __future__ import annotations

import random

# domain -> attribute -> four phrasings. `{value}` always comes last; `{name}` and any other field
# come from the entity itself (the symbol, when the question asks for the name), never its facts.
TEMPLATES = {
    "element": {
        "symbol": ["The chemical symbol of {name} is {value}", "{name} has the chemical symbol {value}",
                   "In the periodic table, {name} is written as {value}", "The symbol for the element {name} is {value}"],
        "number": ["The atomic number of {name} is {value}", "{name} has the atomic number {value}",
                   "The number of protons in an atom of {name} is {value}",
                   "In the periodic table, {name} is element number {value}"],
        "name_from_symbol": ["The element with the chemical symbol {symbol} is {value}",
                             "The chemical symbol {symbol} stands for {value}",
                             "In the periodic table, {symbol} is the symbol of {value}",
                             "The element whose symbol is {symbol} is called {value}"],
        "mass": ["The atomic mass of {name} is about {value}", "{name} has an atomic mass of about {value}",
                 "The atomic weight of {name} is roughly {value}", "An atom of {name} weighs about {value}"],
    },
    "country": {
        "capital": ["The capital of {name} is {value}", "The capital city of {name} is {value}",
                    "The government of {name} sits in its capital, {value}", "{name} is governed from {value}"],
        "continent": ["{name} is a country in {value}", "{name} is located in {value}",
                      "{name} lies on the continent of {value}", "The continent that {name} belongs to is {value}"],
        "currency": ["The currency of {name} is the {value}", "The official currency of {name} is the {value}",
                     "In {name}, people pay with the {value}", "The money used in {name} is the {value}"],
        "language": ["The official language of {name} is {value}", "Most people in {name} speak {value}",
                     "The main language of {name} is {value}", "In {name}, the language spoken is {value}"],
    },
}
PHRASINGS = 4


def fields(entity: dict) -> dict:
    """What a template may name besides the value: the entity's own fields (name, symbol)."""
    return {key: value for key, value in entity.items() if key != "facts"}


def sentence(domain: str, entity: dict, attribute: str, phrasing: int) -> str:
    template = TEMPLATES[domain][attribute][phrasing]
    return template.format(**fields(entity), value=entity["facts"][attribute]) + "."


def prompt(domain: str, entity: dict, attribute: str, phrasing: int) -> str:
    """The sentence up to (not including) the space before the value."""
    return TEMPLATES[domain][attribute][phrasing].split("{value}")[0].rstrip().format(**fields(entity))


def documents(domain: str, entity: dict, rng: random.Random) -> list[str]:
    """One document per phrasing (all the entity's facts in it), plus two mixed paragraphs."""
    attributes = list(entity["facts"])
    texts = []
    for phrasing in range(PHRASINGS):
        rng.shuffle(attributes)
        texts.append(" ".join(sentence(domain, entity, attribute, phrasing) for attribute in attributes))
    for _ in range(2):
        rng.shuffle(attributes)
        texts.append(" ".join(sentence(domain, entity, attribute, rng.randrange(PHRASINGS)) for attribute in attributes))
    return texts


def corpus(domain: str, entities: list[dict], seed: int) -> list[str]:
    """Documents about `entities`, in a seeded shuffled order."""
    rng = random.Random(seed)
    texts = [text for entity in entities for text in documents(domain, entity, rng)]
    rng.shuffle(texts)
    return texts


def pools(entities: list[dict]) -> dict[str, list[str]]:
    """attribute -> every distinct value it takes among `entities` (the distractors' field)."""
    values: dict[str, list[str]] = {}
    for entity in entities:
        for attribute, value in entity["facts"].items():
            values.setdefault(attribute, [])
            if value not in values[attribute]:
                values[attribute].append(value)
    return values


def cloze_items(domain: str, entities: list[dict], pool: dict[str, list[str]], phrasings: list[int] | None, seed: int) -> list[dict]:
    """Questions `{"prompt", "answer_text", "pool", "entity", "attribute"}`: one per fact and
    phrasing in `phrasings`, or one per fact in a seeded random phrasing when it is None."""
    rng = random.Random(seed)
    items = []
    for entity in entities:
        for attribute in entity["facts"]:
            chosen = phrasings if phrasings is not None else [rng.randrange(PHRASINGS)]
            for phrasing in chosen:
                items.append({"prompt": prompt(domain, entity, attribute, phrasing), "answer_text": entity["facts"][attribute],
                              "pool": pool[attribute], "entity": entity["name"], "attribute": attribute})
    return items
