"""Forget and retain corpora: hub datasets or local files in, padded token batches out."""

from __future__ import annotations

from pathlib import Path

import torch

from peel.config import ChatSource, DataSource
from peel.errors import PeelError, first_line

# Local file suffix -> the `datasets` builder that reads it.
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


def load_rows(path: str, name: str | None, split: str):
    """A `datasets.Dataset` from a hub id, a local file or folder, or a scenario name (testbed:forget)."""
    import datasets

    from peel import scenarios

    if scenarios.is_scenario_name(path):
        path = scenarios.resolve(path)
    local = Path(path)
    if local.is_file() or local.is_dir():
        return _load_local(local)
    if path.startswith((".", "/", "~")) or local.suffix in LOCAL_FORMATS:
        raise PeelError(f"data file {path!r} does not exist (accepted: a .jsonl/.parquet/.txt file or folder, or a hub id)")
    try:
        return datasets.load_dataset(path, name=name, split=split)
    except Exception as error:  # the hub raises many types; all mean "this dataset cannot be had"
        raise PeelError(f"cannot load dataset {path!r} (config {name!r}, split {split!r}): {first_line(error)}") from None


def _load_local(path: Path):
    import datasets

    if path.is_dir() and (path / "dataset_info.json").exists():
        return datasets.load_from_disk(str(path))
    files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_FORMATS) if path.is_dir() else [path]
    kinds = {LOCAL_FORMATS.get(p.suffix) for p in files}
    if not files or None in kinds or len(kinds) > 1:
        raise PeelError(
            f"data path {str(path)!r} must be one kind of {', '.join(LOCAL_FORMATS)} file "
            f"(or a folder of them), found {[p.name for p in files] or 'nothing'}"
        )
    return datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train")


def _select(rows, column: str, count: int, seed: int, where: str) -> list:
    """`count` non-empty values of `column`, in a seeded random order."""
    if column not in rows.column_names:
        raise PeelError(f"{where} has no column {column!r}; its columns are {rows.column_names}")
    values = []
    for value in rows.shuffle(seed=seed)[column]:
        if value:
            values.append(value)
            if len(values) == count:
                return values
    raise PeelError(f"{where} has {len(values)} non-empty examples in column {column!r}; {count} are needed")


def load_texts(source: DataSource, num_examples: int, seed: int) -> list[str]:
    rows = load_rows(source.path, source.name, source.split)
    return _select(rows, source.text_field, num_examples, seed, where=f"dataset {source.path!r}")


def load_chat_texts(source: ChatSource, num_examples: int, seed: int, tokenizer) -> list[str]:
    """Conversations rendered with the tokenizer's chat template."""
    if tokenizer.chat_template is None:
        raise PeelError(f"data.chat.path={source.path!r} needs a tokenizer with a chat template; this one has none")
    rows = load_rows(source.path, source.name, source.split)
    conversations = _select(rows, source.messages_field, num_examples, seed, where=f"dataset {source.path!r}")
    return [tokenizer.apply_chat_template(messages, tokenize=False) for messages in conversations]


def load_retain_texts(retain: DataSource, chat: ChatSource, num_examples: int, seed: int, tokenizer) -> list[str]:
    """Retain texts; when chat data is configured, a `chat.fraction` share of them is conversations."""
    if chat.path is None:
        return load_texts(retain, num_examples, seed)
    if not 0 <= chat.fraction <= 1:
        raise PeelError(f"data.chat.fraction={chat.fraction} must be between 0 and 1")
    chat_count = round(num_examples * chat.fraction)
    texts = load_texts(retain, num_examples - chat_count, seed) + load_chat_texts(chat, chat_count, seed, tokenizer)
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    return [texts[index] for index in order]


def tokenize(texts: list[str], tokenizer, max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to `max_length`; texts that tokenize to nothing are an error."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]
    empty = sum(1 for ids in encoded if not ids)
    if empty:
        raise PeelError(f"{empty} texts tokenize to no tokens; remove empty texts from the dataset")
    return encoded


def collate(examples: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask for a list of token-id lists."""
    width = max(len(ids) for ids in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ids in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
