"""Tiny models and corpora built on the spot: no network, a few seconds at most."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per test process, and in the CLI subprocesses the end-to-end tests start: these models
# are tiny, and on shared cores more threads only wait for each other (benchmarks/thread_bench.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

WORDS = (
    "the virus spreads through bats and mice in spring while the town of river trades salt grain "
    "and wool every autumn festival founder gene host vector season incubation"
).split()


def make_tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences, with <eos> and <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([" ".join(WORDS)] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>")


def tiny_config(architecture: str, vocab_size: int, num_layers: int = 4):
    from transformers import GPTNeoXConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=128)
    configs = {
        "gpt_neox": lambda: GPTNeoXConfig(**common),
        "llama": lambda: LlamaConfig(**common, num_key_value_heads=2),
        "qwen2": lambda: Qwen2Config(**common, num_key_value_heads=2),
    }
    return configs[architecture]()


def build_model(architecture: str, folder: Path, num_layers: int = 4, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture, len(tokenizer), num_layers))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: build_model(name, root / name) for name in ("gpt_neox", "llama", "qwen2")}


def write_corpus(path: Path, count: int, topic: str, column: str = "text") -> Path:
    generator = torch.Generator().manual_seed(len(topic))
    lines = []
    for index in range(count):
        picks = torch.randint(len(WORDS), (6 + index % 5,), generator=generator).tolist()
        lines.append(json.dumps({column: f"{topic} " + " ".join(WORDS[i] for i in picks)}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {"forget": write_corpus(root / "forget.jsonl", 64, "virus"), "retain": write_corpus(root / "retain.jsonl", 64, "town")}
