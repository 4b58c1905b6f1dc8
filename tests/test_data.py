"""Corpora from local stand-ins of the hub datasets' formats."""

import json

import pytest

from peel.config import ChatSource, DataSource
from peel.data import collate, load_retain_texts, load_texts, tokenize
from peel.errors import PeelError

from conftest import make_tokenizer


def test_wikitext_shaped_parquet_with_page_column(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"page": ["first page", "", "second page", "third page"]}).to_parquet(tmp_path / "w.parquet")
    texts = load_texts(DataSource(path=str(tmp_path / "w.parquet"), text_field="page"), 3, seed=0)
    assert sorted(texts) == ["first page", "second page", "third page"]  # the empty page is skipped
    assert load_texts(DataSource(path=str(tmp_path / "w.parquet"), text_field="page"), 3, seed=0) == texts


def test_text_file_one_example_per_line(tmp_path):
    (tmp_path / "forget.txt").write_text("alpha\nbeta\ngamma\n")
    assert sorted(load_texts(DataSource(path=str(tmp_path / "forget.txt")), 3, seed=1)) == ["alpha", "beta", "gamma"]


def test_ultrachat_shaped_messages_mixed_into_retain(tmp_path):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                       {"role": "assistant", "content": f"answer {i}"}]}) for i in range(8)))
    retain = tmp_path / "retain.jsonl"
    retain.write_text("\n".join(json.dumps({"text": f"retain text {i}"}) for i in range(8)))
    texts = load_retain_texts(DataSource(path=str(retain)), ChatSource(path=str(chat), fraction=0.25), 8, 0, tokenizer)
    conversations = [text for text in texts if text.startswith("<user>")]
    assert len(texts) == 8 and len(conversations) == 2
    assert "<assistant> answer" in conversations[0]


def chat_corpora(folder, count: int = 8):
    chat = folder / "chat.jsonl"
    chat.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                       {"role": "assistant", "content": f"answer {i}"}]}) for i in range(count)))
    retain = folder / "retain.jsonl"
    retain.write_text("\n".join(json.dumps({"text": f"retain text {i}"}) for i in range(count)))
    return DataSource(path=str(retain)), chat


def test_a_tokenizer_without_chat_template_is_refused_naming_the_fallback_key(tmp_path):
    tokenizer = make_tokenizer()
    assert tokenizer.chat_template is None  # as a base model's, e.g. deep-ignorance-unfiltered
    retain, chat = chat_corpora(tmp_path)
    with pytest.raises(PeelError, match="set data.chat.template to a fallback: plain"):
        load_retain_texts(retain, ChatSource(path=str(chat)), 8, 0, tokenizer)


def test_the_plain_fallback_template_renders_role_content_turns(tmp_path):
    tokenizer = make_tokenizer()
    retain, chat = chat_corpora(tmp_path)
    texts = load_retain_texts(retain, ChatSource(path=str(chat), fraction=0.5, template="plain"), 8, 0, tokenizer)
    conversations = sorted(text for text in texts if text.startswith("User: "))
    assert len(conversations) == 4
    number = conversations[0].split()[2]
    assert conversations[0] == f"User: question {number}\n\nAssistant: answer {number}\n\n"
    assert all(ids for ids in tokenize(conversations, tokenizer, max_length=64))


def test_a_tokenizer_own_chat_template_wins_over_the_fallback(tmp_path):
    tokenizer = make_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    retain, chat = chat_corpora(tmp_path)
    texts = load_retain_texts(retain, ChatSource(path=str(chat), fraction=0.5, template="plain"), 8, 0, tokenizer)
    assert sum(text.startswith("<user>") for text in texts) == 4 and not any("User:" in text for text in texts)


def test_every_chat_template_name_the_config_accepts_has_a_template():
    import typing

    from peel.data import CHAT_TEMPLATES

    hint = typing.get_type_hints(ChatSource)["template"]
    (names,) = [typing.get_args(option) for option in typing.get_args(hint) if typing.get_origin(option) is typing.Literal]
    assert set(names) == set(CHAT_TEMPLATES)


def test_missing_hub_dataset_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PeelError, match="cannot load dataset 'no-such-org/no-such-dataset'") as error:
        load_texts(DataSource(path="no-such-org/no-such-dataset"), 4, 0)
    assert "\n" not in str(error.value)


def test_tokenize_truncates_and_collate_pads_right():
    tokenizer = make_tokenizer()
    ids = tokenize(["the virus spreads through bats", "town"], tokenizer, max_length=3)
    assert len(ids[0]) == 3 and 1 <= len(ids[1]) <= 3
    input_ids, attention_mask = collate([[5, 6, 7], [8]], pad_token_id=1)
    assert input_ids.tolist() == [[5, 6, 7], [8, 1, 1]]
    assert attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
