"""Where a decoder-only model keeps its layers, and the forward passes peel needs from it.

This is the one module that knows model anatomy. Everything else asks `find_anatomy` for the
decoder layers, the final norm and the unembedding, so any `AutoModelForCausalLM` with a layer
list works: GPT-NeoX, Llama, Qwen2, Mistral, Gemma, Phi, GPT-2 and their relatives.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from peel.errors import PeelError

# model_type -> (attribute path of the decoder inside the causal LM, layer list name, final norm name).
# Models not listed are searched for the usual names, see `_search_anatomy`.
KNOWN_LAYOUTS = {
    "gpt_neox": ("gpt_neox", "layers", "final_layer_norm"),
    "llama": ("model", "layers", "norm"),
    "mistral": ("model", "layers", "norm"),
    "qwen2": ("model", "layers", "norm"),
    "qwen3": ("model", "layers", "norm"),
    "gemma": ("model", "layers", "norm"),
    "gemma2": ("model", "layers", "norm"),
    "phi": ("model", "layers", "final_layernorm"),
    "phi3": ("model", "layers", "norm"),
    "olmo": ("model", "layers", "norm"),
    "olmo2": ("model", "layers", "norm"),
    "gpt2": ("transformer", "h", "ln_f"),
}
DECODER_NAMES = ("model", "gpt_neox", "transformer", "decoder")
LAYER_LIST_NAMES = ("layers", "h", "blocks", "layer")
FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "final_norm")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Anatomy:
    """The parts of a causal LM that the method touches."""

    decoder: nn.Module  # runs embeddings + layers + final norm, returns hidden states
    layer_list_name: str  # attribute of `decoder` holding the nn.ModuleList
    final_norm: nn.Module
    unembedding: nn.Module

    @property
    def layers(self) -> nn.ModuleList:
        return getattr(self.decoder, self.layer_list_name)

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def find_anatomy(model: nn.Module) -> Anatomy:
    inner = causal_lm(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type in KNOWN_LAYOUTS:
        decoder_name, layer_list_name, norm_name = KNOWN_LAYOUTS[model_type]
        decoder = getattr(inner, decoder_name)
        return Anatomy(decoder, layer_list_name, getattr(decoder, norm_name), inner.get_output_embeddings())
    return _search_anatomy(inner, model_type)


def _search_anatomy(inner: nn.Module, model_type: str | None) -> Anatomy:
    for decoder_name in DECODER_NAMES:
        decoder = getattr(inner, decoder_name, None)
        if decoder is None:
            continue
        layer_list_name = next(
            (name for name in LAYER_LIST_NAMES if isinstance(getattr(decoder, name, None), nn.ModuleList)), None
        )
        norm = next((getattr(decoder, name) for name in FINAL_NORM_NAMES if hasattr(decoder, name)), None)
        unembedding = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
        if layer_list_name and norm is not None and unembedding is not None:
            return Anatomy(decoder, layer_list_name, norm, unembedding)
    raise PeelError(
        f"unsupported model type {model_type!r}: peel needs a decoder-only causal LM with a layer list "
        f"({'/'.join(LAYER_LIST_NAMES)}) and a final norm; known types: {', '.join(KNOWN_LAYOUTS)}"
    )


# --------------------------------------------------------------------------------------------
# Loading and saving


def resolve_model_path(name_or_path: str) -> str:
    from peel import scenarios

    if scenarios.is_scenario_name(name_or_path):
        return scenarios.resolve(name_or_path)
    return name_or_path


def load_model_config(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """The model's configuration alone: cheap, so inputs can be checked before weights load."""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PeelError(
            f"cannot load model {name_or_path!r}: {first_line} "
            "(accepted: a hub id, a local save_pretrained folder, or testbed:base / testbed:filtered)"
        ) from None


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """A causal LM and its tokenizer, with a pad token (eos when the tokenizer has none)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise PeelError(f"dtype {dtype!r} is not supported; accepted: {', '.join(DTYPES)}")
    load_model_config(name_or_path, revision, trust_remote_code)  # one clear error for a bad name
    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PeelError(f"the tokenizer of {name_or_path!r} has neither a pad nor an eos token; peel needs one")
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=DTYPES[dtype],
        attn_implementation=attn_implementation,
        revision=revision,
        trust_remote_code=trust_remote_code,
        use_safetensors=None if trust_remote_code else True,
    )
    find_anatomy(model)  # unsupported architectures fail here, before any work
    return model, tokenizer


def save_model(model: nn.Module, tokenizer, folder: str | Path, state_dict: dict | None = None) -> None:
    """save_pretrained in safetensors, with the tokenizer beside it.

    `state_dict` replaces the model's own, e.g. whole tensors gathered from a sharded model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    causal_lm(model).save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in backward. Non-reentrant, so a pass whose inputs need
    no gradient (frozen embeddings) still gets gradients for the layers' own parameters."""
    inner = causal_lm(model)
    options = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # the name since transformers 5.2x
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


# --------------------------------------------------------------------------------------------
# Forward passes


def layer_output(output) -> torch.Tensor:
    """Decoder layers return a tensor or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


@contextlib.contextmanager
def truncated(anatomy: Anatomy, num_layers: int) -> Iterator[None]:
    """Run only the first `num_layers` decoder layers: the rest of the stack is never computed."""
    full = anatomy.layers
    if num_layers >= len(full):
        yield
        return
    setattr(anatomy.decoder, anatomy.layer_list_name, nn.ModuleList(list(full)[:num_layers]))
    try:
        yield
    finally:
        setattr(anatomy.decoder, anatomy.layer_list_name, full)


def hidden_states(
    anatomy: Anatomy, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int]
) -> dict[int, torch.Tensor]:
    """Outputs of the given decoder layers, stopping after the deepest one."""
    captured: dict[int, torch.Tensor] = {}
    handles = [
        anatomy.layers[index].register_forward_hook(
            lambda module, args, output, index=index: captured.__setitem__(index, layer_output(output))
        )
        for index in layers
    ]
    try:
        with truncated(anatomy, max(layers) + 1):
            anatomy.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {index: captured[index] for index in layers}


def logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
