"""Forget and retain corpora: hub datasets or local files in, padded token batches out."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from peel.config import ChatSource, DataSource
from peel.errors import PeelError, reading

# Local file suffix -> the `datasets` builder that reads it.
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
# data.chat.template -> the Jinja chat template used when the tokenizer has none. Base models ship
# none, and their tokenizer's special tokens mean nothing to them: plain text turns read like the
# web text they were trained on.
CHAT_TEMPLATES = {
    "plain": "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n{% endfor %}",
}
ACCEPTED = "a hub dataset id, a .jsonl / .json / .parquet / .txt file or a folder of one kind of them, or a scenario name (testbed:forget, elements:forget, ...)"


def load_rows(path: str, name: str | None, split: str):
    """A `datasets.Dataset` from a hub id, a local file or folder, or a scenario name (testbed:forget)."""
    import datasets

    from peel import scenarios

    if scenarios.is_scenario_name(path):
        path = scenarios.resolve(path)
    local = Path(path).expanduser()
    if local.is_file() or local.is_dir():
        with reading(f"dataset {path!r}", ACCEPTED), quietly():
            return _load_local(local)
    if path.startswith((".", "/", "~")) or local.suffix in LOCAL_FORMATS:
        raise PeelError(f"data file {path!r} does not exist; accepted: {ACCEPTED}")
    accepted = "a dataset id the hub (or its local cache) has, or " + ACCEPTED.removeprefix("a hub dataset id, ")
    with reading(f"dataset {path!r} (config {name!r}, split {split!r})", accepted, verb="load"):
        return datasets.load_dataset(path, name=name, split=split)


@contextlib.contextmanager
def quietly():
    """Local files load in moments: their progress bars would only be noise (hub downloads keep
    theirs), and a broken file's error is peel's one line, not also `datasets`' log of it."""
    import datasets

    was_enabled = not datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 1)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if was_enabled:
            datasets.enable_progress_bars()


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
    if all(p.stat().st_size == 0 for p in files):
        raise PeelError(f"data path {str(path)!r} is empty; accepted: a file holding at least one text")
    return datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train")


def is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def is_conversation(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(turn, dict) for turn in value)


def _select(
    rows, column: str, count: int | None, seed: int, where: str, required: bool = True, usable=is_text, kind: str = "texts"
) -> list:
    """`count` usable values of `column` (all of them when `count` is None), in a seeded random order.

    A corpus with fewer usable values than `count` is an error when the count is `required`
    (the user asked for it); otherwise it gives all it has and says so. A corpus with none is an
    error that counts what it found instead.
    """
    if column not in rows.column_names:
        raise PeelError(f"{where} has no column {column!r}; its columns are {rows.column_names}")
    values = rows.shuffle(seed=seed)[column]
    chosen = [value for value in values if usable(value)][:count]
    if not chosen:
        blank = sum(1 for value in values if isinstance(value, str) and not value.strip())
        other = len(values) - blank
        raise PeelError(
            f"{where} holds no usable {kind} in column {column!r}: {len(values)} rows, {blank} empty or blank, "
            f"{other} of another type; accepted: non-empty {kind}"
        )
    if count is not None and len(chosen) < count:
        message = f"{where} holds {len(chosen)} usable {kind} in column {column!r}"
        if required:
            raise PeelError(f"{message}; {count} are asked for; accepted: a count of at most {len(chosen)}")
        print(f"peel: {message}; using all of them ({count} wanted)")
    return chosen
def load_texts(source: DataSource, num_examples: int | None, seed: int, required: bool = True) -> list[str]:
    """`num_examples` texts of the source (all when None); see `_select` for `required`."""
    rows = load_rows(source.path, source.name, source.split)
    return _select(rows, source.text_field, num_examples, seed, f"dataset {source.path!r}", required)


def load_chat_texts(source: ChatSource, num_examples: int, seed: int, tokenizer, required: bool = True) -> list[str]:
    """Conversations rendered with the tokenizer's chat template, or `source.template` when it has none."""
    template = tokenizer.chat_template or CHAT_TEMPLATES.get(source.template)
    if template is None:
        raise PeelError(
            f"data.chat.path={source.path!r} needs a chat template and this tokenizer has none; "
            f"set data.chat.template to a fallback: {', '.join(CHAT_TEMPLATES)}"
        )
    rows = load_rows(source.path, source.name, source.split)
    conversations = _select(
        rows, source.messages_field, num_examples, seed, f"dataset {source.path!r}", required, is_conversation, "conversations"
    )
    return [tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False) for messages in conversations]


def load_retain_texts(
    retain: DataSource, chat: ChatSource, num_examples: int, seed: int, tokenizer, required: bool = True
) -> list[str]:
    """Retain texts; when chat data is configured, a `chat.fraction` share of them is conversations."""
    if chat.path is None:
        return load_texts(retain, num_examples, seed, required)
    chat_count = round(num_examples * chat.fraction)
    texts = load_texts(retain, num_examples - chat_count, seed, required) if chat_count < num_examples else []
    if chat_count:
        texts += load_chat_texts(chat, chat_count, seed, tokenizer, required)
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
