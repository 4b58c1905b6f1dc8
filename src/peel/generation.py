"""Text a model writes itself (`distill.data: generated`): prompts from the openings of given texts
and of a few neutral seed phrases, sampled at a temperature, seeded, and kept in a cache file that
a later run with the same settings reads instead of sampling again.

Sampling is plain ancestral sampling (no top-k, no top-p) at `temperature`, `max_new_tokens` new
tokens a prompt, batches of left-padded prompts in a fixed order after one `torch.manual_seed`, so
the same settings on the same device give the same texts. Each text is its prompt followed by what
the model wrote, up to its first end-of-text token.
"""

from __future__ import annotations

import re

import torch

from peel.errors import PeelError
from peel.runs import folder as run_folder

# Openings with no domain of their own, beside the retain texts' openings.
SEED_PHRASES = ("The", "In the", "Once upon a time,", "Here is how", "The history of", "A good way to", "Yesterday,",
                "In general,")


def prompts(openings: list[list[int]], tokenizer, count: int, prompt_tokens: int) -> list[list[int]]:
    """`count` prompts, cycling through the first `prompt_tokens` tokens of each of `openings` (token
    ids of texts) and then of each seed phrase."""
    seeds = tokenizer(list(SEED_PHRASES), add_special_tokens=False)["input_ids"]
    pool = [ids[:prompt_tokens] for ids in [*openings, *seeds] if ids]
    return [pool[index % len(pool)] for index in range(count)]


def sample(model, tokenizer, prompt_ids: list[list[int]], temperature: float, max_new_tokens: int, batch_size: int,
           seed: int) -> list[str]:
    """One text per prompt: the prompt and what `model` (on its device, in eval mode) wrote after it."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    texts = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = prompt_ids[start:start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        with torch.no_grad():
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=temperature,
                                    top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                    eos_token_id=tokenizer.eos_token_id)
        for ids, row in zip(batch, output[:, width:].tolist()):
            if tokenizer.eos_token_id in row:
                row = row[:row.index(tokenizer.eos_token_id)]
            texts.append(tokenizer.decode(ids + row, skip_special_tokens=True))
    return texts


def outside(texts: list[str], pattern: re.Pattern | None) -> list[str]:
    """The texts in which `pattern` (the forget keywords) finds nothing; all of them without one."""
    return list(texts) if pattern is None else [text for text in texts if pattern.search(text) is None]


def cached(path, key: dict, make) -> dict:
    """{"key": key, "texts": [...], "dropped": n} from `path` when it was made with `key`, else from
    `make()` (-> (texts, dropped)), written whole to `path` first."""
    if path.is_file():
        document = run_folder.read_json(path, "the generated texts as peel distill writes them")
        if isinstance(document, dict) and document.get("key") == key:
            return document
    texts, dropped = make()
    if not texts:
        raise PeelError(f"every one of the {dropped} generated texts holds a forget keyword (data.forget.keywords); "
                        "accepted: more distill.generated.num_texts, or a keyword list that leaves general text")
    document = {"key": key, "texts": texts, "dropped": dropped}
    run_folder.write_json(path, document)
    return document
