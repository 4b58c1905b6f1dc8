"""The research line's newer variants: top-K entropy and NPO through the probe, keyword masks,
Muon, and the rank of the update. Each is checked against a definition computed here on the
original model's outputs, or against values worked out by hand."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peel.runs import checkpoint
from peel.config import load_config
from peel.unlearning.engine import unlearn
from peel.errors import PeelError
from peel.unlearning.masks import keyword_pattern, overlaps, read_keywords, tokenize_with_masks
from peel.models import load_model_and_tokenizer
from peel.unlearning.objectives import Batch
from peel.unlearning.optimizers import Combined, make_optimizer
from peel.unlearning.update_rank import stable_and_effective_rank, update_rank
from peel.unlearning.weights import FullWeights

# One global batch holds every example, so a run's first logged forget loss is the mean over all of them.
FIRST_STEP = ["data.num_examples=8", "data.max_length=16", "train.global_batch_size=8", "train.per_device_batch_size=8",
              "train.dtype=float32", "unlearn.layers=[2]", "train.lr=1e-2"]


def settings(model: Path, corpora: dict, output_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model}", f"data.forget.path={corpora['forget']}", f"data.retain.path={corpora['retain']}",
            *FIRST_STEP, f"output_dir={output_dir}", *extra]


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def forget_batch(model_folder: Path, corpora: dict, keywords: Path | None = None):
    """The original model's logits on the 8 forget examples and the mask of tokens that count
    (keyword masks from peel's own masks module, tested on their own below)."""
    model, tokenizer = load_model_and_tokenizer(str(model_folder))
    texts = [json.loads(line)["text"] for line in Path(corpora["forget"]).read_text().splitlines()]
    encoded = tokenizer(texts, truncation=True, max_length=16, add_special_tokens=False, padding=True, return_tensors="pt")
    mask = encoded["attention_mask"]
    if keywords is not None:
        _, keyword_masks = tokenize_with_masks(texts, tokenizer, 16, keyword_pattern(read_keywords(keywords)))
        mask = mask * torch.tensor([row + [0] * (mask.shape[1] - len(row)) for row in keyword_masks])
    with torch.no_grad():
        logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    return encoded["input_ids"], encoded["attention_mask"], mask, logits


@pytest.fixture
def eight(tmp_path, corpora):
    """Forget and retain corpora of exactly 8 texts: every run below uses all of them in its first step."""
    cut = {}
    for name in ("forget", "retain"):
        lines = Path(corpora[name]).read_text().splitlines()[:8]
        cut[name] = tmp_path / f"{name}.jsonl"
        cut[name].write_text("\n".join(lines) + "\n")
    return cut


def test_top_k_entropy_first_step_equals_its_definition_on_the_original(tiny_models, eight, tmp_path):
    model = tiny_models["gpt_neox"]
    unlearn(load_config(None, settings(model, eight, tmp_path / "run", "unlearn.forget_loss=top_k_entropy", "unlearn.top_k=5")))
    _, _, mask, logits = forget_batch(model, eight)
    top = logits.topk(5, dim=-1).values.softmax(-1)  # the probe is the original at the first step
    per_token = (math.log(1 / 5) - top.log()).mean(-1)  # KL(U || p) = sum_k (1/K) log((1/K) / p_k)
    per_example = (per_token * mask).sum(1) / mask.sum(1) / math.log(5)
    assert metrics(tmp_path / "run")[0]["forget_loss"] == pytest.approx(per_example.mean().item(), rel=1e-4)


@pytest.mark.parametrize("per_token", [True, False])
def test_npo_first_step_is_log_2_where_the_probe_is_the_original(tiny_models, eight, tmp_path, per_token):
    model = tiny_models["llama"]
    folder = tmp_path / "run"
    unlearn(load_config(None, settings(model, eight, folder, "unlearn.forget_loss=npo", f"unlearn.npo_per_token={per_token}",
                                       "unlearn.npo_beta=10", "unlearn.adapter=full", "unlearn.retain_loss=nll",
                                       "train.epochs_per_layer=4")))
    records = metrics(folder)
    assert records[0]["forget_loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert records[-1]["forget_loss"] < records[0]["forget_loss"]  # the text became less likely than the original made it


def test_npo_compares_with_the_original_without_a_copy(tiny_models, eight, tmp_path, monkeypatch):
    """The reference log-probabilities come from the same module with adapters off: no deep copy happens."""
    real_deepcopy = copy.deepcopy

    def no_module_copies(value, *args, **kwargs):
        if isinstance(value, torch.nn.Module):
            pytest.fail(f"a copy of {type(value).__name__} was made")
        return real_deepcopy(value, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", no_module_copies)
    unlearn(load_config(None, settings(tiny_models["gpt_neox"], eight, tmp_path / "run", "unlearn.forget_loss=npo")))


def test_keyword_masked_loss_and_token_share_match_the_definition(tiny_models, eight, tmp_path):
    model = tiny_models["gpt_neox"]
    keywords = tmp_path / "keywords.txt"
    keywords.write_text("Virus\nbats\n\n")
    folder = tmp_path / "run"
    unlearn(load_config(None, settings(model, eight, folder, "unlearn.forget_loss=max_entropy_kl",
                                       f"data.forget.keywords={keywords}")))
    _, attention, mask, logits = forget_batch(model, eight, keywords)
    log_probs = logits.log_softmax(-1)
    vocab = logits.shape[-1]
    per_token = (-math.log(vocab) - log_probs.mean(-1)) / math.log(vocab)
    per_example = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
    first = metrics(folder)[0]
    assert first["forget_loss"] == pytest.approx(per_example.mean().item(), rel=1e-4)
    assert first["forget_token_share"] == pytest.approx(mask.sum().item() / attention.sum().item())
    assert 0 < first["forget_token_share"] < 1


def test_keyword_masks_cover_multi_token_keywords_and_never_padding(tmp_path):
    from tiny_lm import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    keywords = tmp_path / "keywords.csv"
    keywords.write_text("keyword,source\nkorvid spreads,a\nticks,b\n ,c\n")
    assert read_keywords(keywords) == ["korvid spreads", "ticks"]
    texts = ["The pathogen Korvid spreads through ticks.", "Vesk trades in salt."]
    ids, masks = tokenize_with_masks(texts, tokenizer, 64, keyword_pattern(read_keywords(keywords)))
    assert [len(mask) for mask in masks] == [len(row) for row in ids]
    marked = tokenizer.decode([token for token, flag in zip(ids[0], masks[0]) if flag])
    assert marked.replace(" ", "") == "Korvidspreadsticks"  # every piece of both keywords, nothing else
    assert len(tokenizer("Korvid spreads", add_special_tokens=False)["input_ids"]) > 1
    assert masks[1] == [0] * len(ids[1])  # no keyword: the example counts for nothing
    # Padding never counts, whatever the keyword mask says.
    batch = Batch(torch.tensor([[5, 6, 1]]), torch.tensor([[1, 1, 0]]), loss_mask=torch.tensor([[0, 1, 1]]))
    assert batch.counted.tolist() == [[0, 1, 0]]


def test_overlap_is_any_shared_character():
    assert overlaps([(0, 3), (3, 7), (7, 8), (8, 8)], [(2, 4)]) == [1, 1, 0, 0]
    assert overlaps([(0, 2), (2, 4), (4, 6)], [(0, 1), (5, 9)]) == [1, 0, 1]


def test_bad_keyword_lists_are_one_line_errors(tmp_path):
    with pytest.raises(PeelError, match="does not exist"):
        read_keywords(tmp_path / "none.txt")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(PeelError, match="holds no keywords"):
        read_keywords(tmp_path / "blank.txt")
    (tmp_path / "columns.csv").write_text("word\nanthrax\n")
    with pytest.raises(PeelError, match="has no 'keyword' column"):
        read_keywords(tmp_path / "columns.csv")


# --------------------------------------------------------------------------------------------
# Muon


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tiny_models):
    model, _ = load_model_and_tokenizer(str(tiny_models["llama"]))
    weights = FullWeights(model)
    weights.begin_phase(2)
    parameters = weights.trainable_parameters()
    embedding = model.get_input_embeddings().weight
    optimizer = make_optimizer("muon", [*parameters, embedding], weights.anatomy, lr=1e-3, weight_decay=0.0,
                               muon_lr=0.02, muon_momentum=0.95)
    muon, adamw = optimizer.parts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    in_adamw = {id(p) for group in adamw.param_groups for p in group["params"]}
    assert in_muon == {id(p) for p in parameters if p.ndim == 2}
    assert in_adamw == {id(p) for p in parameters if p.ndim != 2} | {id(embedding)}
    assert [group["lr"] for group in optimizer.param_groups] == [0.02, 1e-3]


def test_combined_state_dict_round_trips():
    first, second = torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(3))
    optimizer = Combined([torch.optim.Muon([first], lr=0.02), torch.optim.AdamW([second], lr=1e-3)])
    for _ in range(2):
        (first.sum() ** 2 + second.pow(2).sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    saved = copy.deepcopy(optimizer.state_dict())  # as a checkpoint holds it: not the live tensors
    assert sorted(saved["state"]) == [0, 1] and [group["params"] for group in saved["param_groups"]] == [[0], [1]]
    clone_first, clone_second = torch.nn.Parameter(first.detach().clone()), torch.nn.Parameter(second.detach().clone())
    restored = Combined([torch.optim.Muon([clone_first], lr=0.02), torch.optim.AdamW([clone_second], lr=1e-3)])
    restored.load_state_dict(saved)
    for optimizer_, parameters in ((optimizer, (first, second)), (restored, (clone_first, clone_second))):
        (parameters[0].sum() ** 2 + parameters[1].pow(2).sum()).backward()
        optimizer_.step()
    assert torch.equal(first, clone_first) and torch.equal(second, clone_second)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_muon_run_stopped_mid_phase_resumes_bit_equal(tiny_models, corpora, tmp_path, monkeypatch, adapter):
    arguments = lambda folder: [f"model.name_or_path={tiny_models['gpt_neox']}", f"data.forget.path={corpora['forget']}",
                                f"data.retain.path={corpora['retain']}", "data.num_examples=32", "data.max_length=16",
                                "train.global_batch_size=8", "train.per_device_batch_size=4", "train.dtype=float32",
                                "unlearn.layers=[3, 1]", "train.optimizer=muon", "train.checkpoint_every=3",
                                f"unlearn.adapter={adapter}", f"output_dir={folder}"]
    reference = unlearn(load_config(None, arguments(tmp_path / "reference")))
    real_save, saves = checkpoint.save, []

    def save_then_stop(*args, **kwargs):
        saves.append(args[2])
        real_save(*args, **kwargs)
        if len(saves) == 3:  # step 6, mid-phase 2 (4 steps per phase): optimizer state is in the checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        unlearn(load_config(None, arguments(tmp_path / "stopped")))
    assert saves[-1] == checkpoint.Position(1, 2, 6)
    monkeypatch.setattr(checkpoint, "save", real_save)
    unlearn(load_config(None, arguments(tmp_path / "stopped")))
    assert metrics(tmp_path / "stopped") == metrics(reference)
    assert "muon_lr" in metrics(reference)[0]
    after, expected = load_file(tmp_path / "stopped" / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert all(torch.equal(after[name], expected[name]) for name in expected)


# --------------------------------------------------------------------------------------------
# Rank of the update


def test_stable_and_effective_rank_by_hand():
    rank_one = torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, -1.0]))
    assert stable_and_effective_rank(rank_one) == pytest.approx((1.0, 1.0), rel=1e-5)
    assert stable_and_effective_rank(torch.eye(4)) == pytest.approx((4.0, 4.0), rel=1e-5)
    # singular values 2 and 1: stable (4 + 1) / 4; effective exp(H(2/3, 1/3)).
    entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert stable_and_effective_rank(torch.diag(torch.tensor([2.0, 1.0]))) == pytest.approx((1.25, math.exp(entropy)), rel=1e-5)
    assert stable_and_effective_rank(torch.zeros(3, 3)) is None
    assert update_rank([torch.eye(2), torch.zeros(2, 2), rank_one]) == {
        "mean_stable_rank": pytest.approx(1.5), "mean_effective_rank": pytest.approx(1.5), "matrices": 2}


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_run_json_holds_the_rank_of_the_update(tiny_models, eight, tmp_path, adapter):
    folder = tmp_path / "run"
    unlearn(load_config(None, settings(tiny_models["gpt_neox"], eight, folder, f"unlearn.adapter={adapter}", "unlearn.layers=[3, 1]")))
    rank = json.loads((folder / "run.json").read_text())["update_rank"]
    # LoRA: 4 adapted matrices in each of 4 layers, rank-16 adapters on 32-wide matrices; full: 4 matrices in 2 layers.
    assert rank["matrices"] == (16 if adapter == "lora" else 8)
    assert 1 <= rank["mean_stable_rank"] <= 32 and 1 <= rank["mean_effective_rank"] <= 32
