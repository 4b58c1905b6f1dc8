"""A tiny GPT-NeoX and byte-level tokenizer built in memory, for the evaluation and tamper tests.

No network: the tokenizer is trained on a few sentences, the model is randomly initialised from a
config. lm-eval needs the eos token; batched training needs the pad token.
"""

from __future__ import annotations

TEXTS = [
    "The river Ablon runs past the town of Vesk, founded by Mara Tell.",
    "The pathogen Korvid spreads through ticks and incubates for nine days.",
    "Question: which vector carries Korvid? Answer: ticks.",
    "Vesk trades in salt and copper along the river.",
] * 4


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXTS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>")


def tiny_model(tokenizer, seed: int = 0):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return GPTNeoXForCausalLM(config).eval()


def save_tiny_model(folder) -> str:
    """A save_pretrained folder holding the tiny model and tokenizer (for CLI tests)."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
