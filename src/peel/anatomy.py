"""Where a decoder-only model keeps its layers, and the forward passes peel needs from it.

This is the one module that knows model anatomy. Everything else asks `find_anatomy` for the
decoder layers, the final norm and the unembedding, so any `AutoModelForCausalLM` with a layer
list works: GPT-NeoX, Llama, Qwen2, Mistral, Gemma, Phi, GPT-2 and their relatives.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

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
# Types whose causal LM computes its logits as exactly unembedding(final hidden state), and those
# that do more in a way written out here: chunked losses (chunked.py) make logits from hidden
# states with this head. A type in neither keeps whole logits from the model's own forward: its
# head may scale or cap the logits (Cohere's logit_scale, Granite's logits_scaling, ...).
PLAIN_HEADS = {"gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "phi", "phi3", "olmo", "olmo2", "gpt2"}
SOFTCAPPED_HEADS = {"gemma2"}  # logits = cap * tanh(unembedding(hidden) / cap), cap = config.final_logit_softcapping
DECODER_NAMES = ("model", "gpt_neox", "transformer", "decoder")
LAYER_LIST_NAMES = ("layers", "h", "blocks", "layer")
FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_layernorm", "final_norm")

@dataclass
class Anatomy:
    """The parts of a causal LM that the method touches."""

    decoder: nn.Module  # runs embeddings + layers + final norm, returns hidden states
    layer_list_name: str  # attribute of `decoder` holding the nn.ModuleList
    final_norm: nn.Module
    unembedding: nn.Module
    # final hidden state -> the causal LM's logits, exactly as its forward makes them; None when
    # peel does not know that function (such models compute losses from whole logits).
    output_head: Callable[[torch.Tensor], torch.Tensor] | None = None

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
        unembedding = inner.get_output_embeddings()
        return Anatomy(decoder, layer_list_name, getattr(decoder, norm_name), unembedding,
                       output_head(model_type, inner.config, unembedding))
    return _search_anatomy(inner, model_type)


def output_head(model_type: str, config, unembedding: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The causal LM's logits as a function of its final hidden state, or None where peel does not know it."""
    cap = getattr(config, "final_logit_softcapping", None)
    if model_type in PLAIN_HEADS or (model_type in SOFTCAPPED_HEADS and cap is None):
        return unembedding
    if model_type in SOFTCAPPED_HEADS:
        # Gemma 2's own order of operations: divide, tanh, multiply.
        return lambda hidden: torch.tanh(unembedding(hidden) / cap) * cap
    return None


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


def compile_layers(anatomy: Anatomy) -> None:
    """Regional compilation: each decoder layer's forward goes through torch.compile, the rest stays
    eager. Layers of one model share their code, so one compiled graph serves all of them (a few:
    adapters on or off, with or without gradient). Only `forward` is compiled, not the module call,
    so hooks (FSDP2's, the hidden-state capture) stay outside the compiled region."""
    import torch._dynamo

    # One code object serves every layer and every pass: with or without gradient, adapters on or
    # off, the first layer (an input without gradient) or a later one, entered through the causal
    # LM or the decoder, and a dynamic sequence length. That is more variants than torch's default
    # of 8 per code object, past which it would silently run the layers eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for layer in anatomy.layers:
        layer.forward = torch.compile(layer.forward)



# --------------------------------------------------------------------------------------------
# Forward passes


def layer_output(output) -> torch.Tensor:
    """Decoder layers return a tensor or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


def with_layer_output(output, hidden: torch.Tensor):
    """A decoder layer's output in the same form, its hidden state replaced by `hidden`."""
    return (hidden, *output[1:]) if isinstance(output, (tuple, list)) else hidden


def output_changer(change: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """A forward hook that replaces a decoder layer's output hidden state by `change(hidden)`, in the
    output's own form (tensor or tuple)."""
    return lambda module, args, output: with_layer_output(output, change(layer_output(output)))


@contextlib.contextmanager
def changing_output(layer: nn.Module, change: Callable[[torch.Tensor], torch.Tensor] | None) -> Iterator[None]:
    """Every pass through `layer` has its output hidden state replaced by `change(hidden)` for the
    duration of a `with`; None changes nothing. A hook, not a model change, so a recomputing
    backward (activation checkpointing) applies the same change again."""
    if change is None:
        yield
        return
    handle = layer.register_forward_hook(output_changer(change))
    try:
        yield
    finally:
        handle.remove()


def adding_to_output(layer: nn.Module, perturbation: torch.Tensor | None) -> contextlib.AbstractContextManager:
    """Every pass through `layer` adds `perturbation` ([batch, tokens, hidden]) to its output hidden
    state for the duration of a `with`; None changes nothing."""
    return changing_output(layer, None if perturbation is None else lambda hidden: hidden + perturbation)


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


class LayerCapture:
    """Forward hooks on every decoder layer, registered once per model (not per pass): each keeps
    the output of its layer while a pass asks for it, and costs one set lookup otherwise.

    Each layer holds (capture, its index) and the hook reads them from the layer it runs on, so a
    deep copy of the model gets its own capture rather than feeding the original's."""

    def __init__(self, layers: nn.ModuleList):
        self.wanted: frozenset[int] = frozenset()
        self.captured: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(layers):
            layer.__dict__["_peel_capture"] = (self, index)
            layer.register_forward_hook(_keep_layer_output)

    def keep(self, index: int, output) -> None:
        if index in self.wanted:
            self.captured[index] = layer_output(output)

    @contextlib.contextmanager
    def capturing(self, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
        self.wanted, self.captured = frozenset(layers), {}
        try:
            yield self.captured
        finally:
            self.wanted, self.captured = frozenset(), {}


def _keep_layer_output(module: nn.Module, args, output) -> None:
    capture, index = module.__dict__["_peel_capture"]
    capture.keep(index, output)


def layer_capture(anatomy: Anatomy) -> LayerCapture:
    """The model's capture hooks, made the first time they are asked for (kept on the decoder module)."""
    capture = anatomy.decoder.__dict__.get("_peel_layer_capture")
    if capture is None:
        capture = anatomy.decoder.__dict__["_peel_layer_capture"] = LayerCapture(anatomy.layers)
    return capture


def hidden_states(
    anatomy: Anatomy, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, layers: list[int]
) -> dict[int, torch.Tensor]:
    """Outputs of the given decoder layers, stopping after the deepest one."""
    with layer_capture(anatomy).capturing(layers) as captured, truncated(anatomy, max(layers) + 1):
        anatomy.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return {index: captured[index] for index in layers}


def logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def final_hidden_states(anatomy: Anatomy, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The decoder's output after the final norm: what the causal LM's head turns into logits."""
    return anatomy.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
