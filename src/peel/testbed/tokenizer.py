"""A byte-level BPE tokenizer trained on the world's text, saved as a transformers tokenizer.

Byte-level so that any text (including text the world never produced) round-trips; `<eos>` is
required by lm-eval (it prefixes empty contexts with it) and `<pad>` by batched training.
"""

from __future__ import annotations

EOS = "<eos>"
PAD = "<pad>"


def train_tokenizer(texts: list[str], vocab_size: int):
    """Return a `PreTrainedTokenizerFast` whose vocabulary is learned from `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],  # ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD)
