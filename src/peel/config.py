"""Configuration: nested dataclasses, YAML files, dotted `key=value` overrides, validation.

Every default lives in a dataclass field below and every field's `help` is what
`peel unlearn --help` prints, so the documentation cannot drift from the code.
Values are checked against the field's type when loaded; an unknown key or a wrong type is a
`PeelError` naming the key, the value and what is accepted.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from peel.errors import PeelError, reading
from peel.relative_paths import resolve_paths


@dataclass(frozen=True)
class Bound:
    """The accepted range of a numeric field, declared beside its default and shown by `--help`.

    Applies to the field's value, or to each item of a list; None (where a field allows it) is
    always accepted. Every float is also required to be finite, whatever its bound.
    """

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False

    def accepts(self, value: float) -> bool:
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return False
        if self.maximum is not None and (value >= self.maximum if self.exclusive_maximum else value > self.maximum):
            return False
        return True

    def __str__(self) -> str:
        low = None if self.minimum is None else f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        high = None if self.maximum is None else f"{'<' if self.exclusive_maximum else '<='} {self.maximum:g}"
        if low and high:
            return f"in {'(' if self.exclusive_minimum else '['}{self.minimum:g}, {self.maximum:g}{')' if self.exclusive_maximum else ']'}"
        return low or high or "any finite number"


POSITIVE = Bound(minimum=0, exclusive_minimum=True)
NON_NEGATIVE = Bound(minimum=0)
AT_LEAST_ONE = Bound(minimum=1)
FRACTION = Bound(minimum=0, maximum=1)


def option(default: Any = dataclasses.MISSING, help: str = "", bound: Bound | None = None, **kwargs: Any) -> Any:
    """A dataclass field with help text and, for numbers, its accepted range; mutable defaults
    are copied per instance."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        value = default
        kwargs["default_factory"] = lambda: copy.deepcopy(value)
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(metadata={"help": help, "bound": bound}, **kwargs)


@dataclass
class ModelConfig:
    name_or_path: str = option(
        "testbed:base",
        "Hugging Face hub id, local folder in save_pretrained layout, .gguf file, smollm2-135m (a packaged "
        "GGUF file), or a scenario model: testbed:base / testbed:filtered / elements:base.",
    )
    gguf_file: str | None = option(
        None, "GGUF file inside the name_or_path folder (dequantized to float32 once, cached); None = not GGUF."
    )
    revision: str | None = option(None, "Hub revision (branch, tag or commit) to load.")
    attn_implementation: str | None = option(
        None, "Attention kernel passed to from_pretrained (sdpa, eager, flash_attention_2); None = library default."
    )
    trust_remote_code: bool = option(False, "Run model code shipped with a hub repository. Off unless you ask.")


@dataclass
class DataSource:
    path: str = option("", "Hub dataset id, or a local .jsonl / .parquet / .txt file or folder, or testbed:NAME / elements:NAME.")
    name: str | None = option(None, "Hub dataset configuration name (e.g. wikitext-103-raw-v1).")
    split: str = option("train", "Dataset split.")
    text_field: str = option("text", "Column holding the text.")


@dataclass
class ForgetSource(DataSource):
    keywords: str | None = option(
        None,
        "Keyword list (a text file, one per line, or a CSV with a keyword column): a forget token counts in the "
        "forget loss only when its characters overlap a case-insensitive match; null = every token counts.",
    )


@dataclass
class ChatSource:
    path: str | None = option(None, "Chat dataset mixed into retain data (e.g. HuggingFaceH4/ultrachat_200k); None = off.")
    name: str | None = option(None, "Hub dataset configuration name.")
    split: str = option("train_sft", "Dataset split.")
    messages_field: str = option("messages", "Column holding the list of {role, content} messages.")
    fraction: float = option(
        0.25, "Share of the retain examples taken from the chat data, rendered with the chat template.", FRACTION
    )
    template: Literal["plain"] | None = option(
        None,
        "Chat template for a tokenizer that has none (a base model's, such as deep-ignorance-unfiltered): plain = "
        "each turn as 'User: ...' / 'Assistant: ...' followed by a blank line; null = the tokenizer's own, and a "
        "tokenizer without one is refused. A tokenizer's own template always wins.",
    )


@dataclass
class AdversarySource(DataSource):
    path: str | None = option(
        None, "As data.forget.path: forget-domain text the simulated attack fine-tunes on; null = the forget corpus."
    )


@dataclass
class DataConfig:
    forget: ForgetSource = option(ForgetSource(path="testbed:forget"), "Forget corpus (the knowledge to remove).")
    retain: DataSource = option(DataSource(path="testbed:retain"), "Retain corpus (the knowledge to keep).")
    chat: ChatSource = option(ChatSource(), "Optional chat data mixed into the retain corpus.")
    adversary: AdversarySource = option(
        AdversarySource(), "Text the finetune adversary attacks with (unlearn.adversary: finetune)."
    )
    num_examples: int | None = option(
        None,
        "Forget examples per phase (and as many retain examples); null = every usable forget text "
        "(and as many retain texts as there are, up to that).",
        AT_LEAST_ONE,
    )
    max_length: int = option(512, "Tokens per example; longer texts are truncated.", AT_LEAST_ONE)


@dataclass
class LayerRange:
    start: int | None = option(None, "First (deepest) target layer; None = the model's last layer.", NON_NEGATIVE)
    end: int = option(0, "Last (shallowest) target layer, inclusive when the step lands on it.", NON_NEGATIVE)
    step: int = option(4, "Distance between target layers.", AT_LEAST_ONE)


@dataclass
class LoraOptions:
    rank: int = option(16, "LoRA rank r.", AT_LEAST_ONE)
    alpha: int = option(16, "LoRA alpha (scale = alpha / r).", AT_LEAST_ONE)
    dropout: float = option(0.0, "LoRA dropout.", Bound(minimum=0, maximum=1, exclusive_maximum=True))
    target_modules: list[str] | str = option(
        "all-linear", "Modules given adapters: all-linear, or a list of module names (e.g. [query_key_value])."
    )


@dataclass
class UnlearnConfig:
    layers: list[int] | LayerRange = option(
        LayerRange(start=None, end=0, step=4),
        "Target layers, back to front: {start, end, step} or an explicit list such as [28, 24, 20, 16].",
        NON_NEGATIVE,
    )
    adapter: Literal["lora", "full"] = option("lora", "lora: adapters in every layer; full: only the target layer trains in its phase.")
    lora: LoraOptions = option(LoraOptions(), "LoRA settings (adapter: lora).")
    forget_loss: Literal["random_ce", "max_entropy_kl", "top_k_entropy", "npo"] = option(
        "random_ce",
        "Forget loss on the probe: random_ce and max_entropy_kl (divided by log vocab), top_k_entropy (maximum "
        "entropy over the top_k largest logits, divided by log top_k), npo (against the original model).",
    )
    top_k: int = option(100, "K of top_k_entropy: how many of the largest logits are pushed to a uniform distribution.", Bound(minimum=2))
    npo_beta: float = option(0.1, "beta of the npo forget loss: -log sigmoid(-beta (log p - log p_original)).", POSITIVE)
    npo_per_token: bool = option(
        True, "npo per token (true: the loss of each token's log-ratio, averaged) or per sequence (false: of the mean log-ratio)."
    )
    retain_loss: Literal["l2", "kl", "nll"] = option(
        "l2", "l2: hidden-state distance to the original; kl: KL(original || current) on logits; nll: language-model loss."
    )
    retain_layers: list[int] | Literal["all", "target"] = option(
        "all", "Layers whose hidden states the l2 retain loss compares: a list, all, or target.", NON_NEGATIVE
    )
    remove_coef: float = option(10.0, "Forget loss coefficient (ramps to 0.75x within a phase).", NON_NEGATIVE)
    retain_coef: float = option(5.0, "Retain loss coefficient (ramped within a phase, see retain_ramp).", NON_NEGATIVE)
    retain_ramp: Literal["from_zero", "from_quarter"] = option(
        "from_zero", "Retain coefficient within a phase: from_zero = coef*p, from_quarter = coef*(0.25+0.75p)."
    )
    grad_filter: Literal["none", "same_sign", "asymmetric"] = option(
        "none",
        "Combine forget and retain gradients: none = sum; same_sign = keep elements where they agree; "
        "asymmetric = drop forget elements that disagree, keep all retain.",
    )
    l2sp_coef: float = option(0.0, "L2-SP: coef * ||w - w0||^2 on the target layer; 0 = off.", NON_NEGATIVE)
    adversary: Literal["none", "finetune", "latent"] = option(
        "none",
        "Tamper resistance (adversary.py): none; finetune = every adversary_every steps, attack a copy of the trained "
        "parameters with adversary_steps NLL steps on data.adversary and add the forget gradient at the attacked point "
        "(times adversary_coef); latent = take the forget loss under an L2-bounded perturbation of the target layer's "
        "output that latent_steps of projected gradient descent chose to restore the forget text.",
    )
    adversary_every: int = option(1, "finetune adversary: attack every N optimizer steps of a phase (its first step included).", AT_LEAST_ONE)
    adversary_steps: int = option(4, "finetune adversary: AdamW steps of each simulated attack (batch train.global_batch_size).", AT_LEAST_ONE)
    adversary_lr: float = option(1e-3, "finetune adversary: learning rate of the simulated attack.", POSITIVE)
    adversary_coef: float = option(
        1.0, "finetune adversary: weight of the forget gradient at the attacked parameters (times the step's forget coefficient).", NON_NEGATIVE
    )
    latent_epsilon: float = option(
        0.1,
        "latent adversary: L2 bound of the perturbation of each token's hidden state, relative to that state's own norm "
        "at the target layer's output (0.1 = a tenth of its length; 0.5 broke retain on the testbed); 0 = no perturbation.",
        NON_NEGATIVE,
    )
    latent_steps: int = option(4, "latent adversary: projected gradient steps that choose the perturbation.", AT_LEAST_ONE)


@dataclass
class TrainConfig:
    lr: float = option(1e-4, "Peak learning rate.", POSITIVE)
    optimizer: Literal["adamw", "muon"] = option(
        "adamw", "adamw, or muon: torch.optim.Muon for the 2-D weight matrices that train, AdamW (at lr) for the rest."
    )
    muon_lr: float = option(0.02, "Learning rate of Muon's matrices (train.optimizer: muon).", POSITIVE)
    muon_momentum: float = option(0.95, "Muon's momentum (train.optimizer: muon).", Bound(minimum=0, maximum=1, exclusive_maximum=True))
    weight_decay: float = option(0.0, "AdamW weight decay.", NON_NEGATIVE)
    max_grad_norm: float = option(1.0, "Clip the combined gradient to this norm; 0 = off.", NON_NEGATIVE)
    lr_scheduler: Literal["linear", "constant", "cosine"] = option(
        "linear", "Learning-rate schedule within each phase (a fresh optimizer per phase)."
    )
    warmup_ratio: float = option(0.0, "Share of each phase spent warming up the learning rate.", FRACTION)
    per_device_batch_size: int = option(4, "Examples per forward pass on one device.", AT_LEAST_ONE)
    global_batch_size: int = option(
        32, "Examples per optimizer step over all devices; accumulation is derived.", AT_LEAST_ONE
    )
    epochs_per_layer: int = option(1, "Passes over the examples in each phase.", AT_LEAST_ONE)
    dtype: Literal["bfloat16", "float32"] = option("bfloat16", "Weight and compute dtype.")
    gradient_checkpointing: bool | Literal["selective"] = option(
        False,
        "Recompute activations in backward to save memory: true = whole layers (one more forward pass of compute), "
        "selective = keep the matrix products' and attention's outputs and remake the cheap rest (norms, activations, "
        "rotary embeddings, adapter products) from them.",
    )
    loss_chunk_tokens: int = option(
        1024,
        "Tokens per chunk of the forget, KL and NLL losses: logits are made from the final hidden states a chunk at a "
        "time and recomputed in backward, never whole; used when a micro-batch has more tokens; 0 = whole logits.",
        NON_NEGATIVE,
    )
    compile: bool = option(False, "Compile each decoder layer with torch.compile (regional compilation); the rest stays eager.")
    parallel: Literal["auto", "ddp", "fsdp"] = option(
        "auto",
        "Under torchrun: ddp (a whole copy per process), fsdp (FSDP2 shards), or auto: full fine-tuning fsdp, LoRA ddp "
        "while the weights take at most half of one device's memory and fsdp otherwise.",
    )
    seed: int = option(0, "Seed for data order, random targets and initialisation.", NON_NEGATIVE)
    checkpoint_every: int = option(
        0, "Save a resumable checkpoint every N optimizer steps (and at each phase end); 0 = phase ends only.", NON_NEGATIVE
    )


@dataclass
class EvalConfig:
    tasks: list[str] = option([], "lm-eval tasks run on the baseline and the result, e.g. [wmdp_bio_robust, mmlu].")
    batch_size: int = option(16, "lm-eval batch size.", AT_LEAST_ONE)
    max_length: int = option(2048, "Longest sequence lm-eval feeds the model.", AT_LEAST_ONE)
    limit: int | None = option(None, "Evaluate only the first N documents of each task (quick checks).", AT_LEAST_ONE)
    every_phase: bool = option(False, "Also evaluate after each phase (accuracy vs phase in metrics.jsonl).")
    include_path: str | None = option(
        None,
        "A folder of your own lm-eval task YAMLs (relative to the config file that sets it), indexed beside peel's "
        "and lm-eval's tasks by peel eval, unlearn, tamper and probe; null = none.",
    )


# The seed group's standard attack sweep (research-line-2026.md), as tamper.grid's default. Their
# attacks ran up to 3000 steps; warmup given there in steps is a share of the attack here (30 and
# 100 of 3000), so the sweep keeps its shape at any tamper.steps. Their "paper setting" read its
# data twice: epochs 2 over half as many examples in the same steps.
SEED_ATTACK_SWEEP = [
    {"lr": 2.0e-5, "lr_scheduler": "cosine", "warmup_ratio": 0.1},
    {"lr": 2.0e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.1},
    {"lr": 1.0e-3, "lr_scheduler": "cosine", "warmup_ratio": 0.1},
    {"lr": 2.0e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.01},
    {"lr": 2.0e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.033},
    {"lr": 2.0e-4, "lr_scheduler": "constant", "warmup_ratio": 0.1},
    {"lr": 2.0e-5, "lr_scheduler": "cosine", "warmup_ratio": 0.01, "epochs": 2},
]
# Keys a grid point may not set: they describe the whole grid, not one attack (every attack
# tracks the same tasks, so their worst case compares like with like).
GRID_WIDE_KEYS = ("grid", "few_shot", "tasks")


@dataclass
class TamperConfig:
    data: DataSource = option(
        DataSource(path="Unlearning/WMDP-Bio-Remove-Dataset"),
        "Text the attacker fine-tunes on: forget-domain text, or retain / general text for a benign attack.",
    )
    tasks: list[str] = option(
        ["wmdp_bio_robust", "mmlu"],
        "Tasks evaluated during the attack: the forget task(s) first, then the retain task last "
        "(with two or more), so an attack that only breaks the model shows as such.",
    )
    few_shot: list[int] = option(
        [0, 5],
        "Zero-training attacks: lm-eval num_fewshot on the forget task(s), reported beside the fine-tuning "
        "attacks (0 = the model as it is, which is also step 0 of every fine-tuning attack); [] = none.",
        NON_NEGATIVE,
    )
    grid: list[dict[str, Any]] = option(
        SEED_ATTACK_SWEEP,
        "Attacks, each a mapping of tamper keys that differ from this section, and `kind` (fine_tune, the "
        "default; quantize with bits, group_size; orthogonalize with components, num_examples; few_shot with "
        "shots; prune, WandA or by the unlearning's change, with sparsity, by; prompt, a template around each "
        "question (jailbreak, expert, prefill, or your own); soft_prompt, trained input embeddings, with tokens, "
        "lr; latent, a trained residual-stream push, with epsilon, layers, lr) (default: the seed group's "
        "standard fine-tuning sweep); [] = one fine-tuning attack with this section's settings. peel tamper "
        "--grid replaces it.",
    )
    adapter: Literal["full", "lora"] = option("full", "Fine-tune all weights or a LoRA adapter on every linear layer.")
    lora_rank: int = option(16, "Rank of the attacker's LoRA adapter (alpha = rank).", AT_LEAST_ONE)
    optimizer: Literal["adamw", "sgd"] = option("adamw", "adamw, or sgd (momentum 0.9).")
    lr: float = option(2e-5, "Peak attack learning rate.", POSITIVE)
    lr_scheduler: Literal["constant", "cosine", "linear"] = option(
        "constant",
        "Learning-rate schedule after warmup (transformers' get_scheduler). constant with a warmup runs as "
        "transformers' constant_with_warmup, whose plain constant would ignore the warmup.",
    )
    warmup_ratio: float = option(0.0, "Share of the attack's steps spent warming up (rounded up).", FRACTION)
    warmup_steps: int = option(0, "Warmup steps; when > 0 it wins over warmup_ratio, as in transformers.", NON_NEGATIVE)
    weight_decay: float = option(0.0, "Weight decay (decoupled for adamw).", NON_NEGATIVE)
    max_grad_norm: float = option(0.0, "Clip the attack's gradient to this norm; 0 = off.", NON_NEGATIVE)
    per_device_batch_size: int = option(4, "Examples per attack step.", AT_LEAST_ONE)
    steps: int = option(100, "Attack optimizer steps.", NON_NEGATIVE)
    epochs: int = option(
        1, "Passes over the attack examples within tamper.steps (sizes the default num_examples).", AT_LEAST_ONE
    )
    num_examples: int | None = option(
        None,
        "Attack examples; null = steps x per_device_batch_size / epochs (what the attack reads). "
        "A corpus with fewer gives what it has.",
        AT_LEAST_ONE,
    )
    max_length: int = option(512, "Tokens per attack example.", AT_LEAST_ONE)
    eval_every: int = option(10, "Evaluate every N attack steps (and at step 0 and the last step).", AT_LEAST_ONE)
    eval_steps: list[int] = option(
        [], "Steps to evaluate at instead, besides step 0 and the last: sparse points for a long attack, e.g. "
        "[10, 30, 100, 300] of 1000 steps; [] = every eval_every.", AT_LEAST_ONE,
    )
    dtype: Literal["bfloat16", "float32"] | None = option(
        None, "Weight and compute dtype of the attacked model; null = train.dtype."
    )
    seed: int = option(0, "Seed for the attack's data order and adapter initialisation.", NON_NEGATIVE)

    def validate(self) -> None:
        """Called by `build` once the section is loaded: each grid point is checked like any key,
        long before an attack runs. The kinds' own keys live with the kinds, which build on this
        module: hence the import here rather than at the top."""
        from peel.attacks.kinds import point_settings

        for index, point in enumerate(self.grid):
            point_settings(self, point, f"tamper.grid[{index}]")
        # One attack's settings (a grid's are checked as each point's attack is built).
        late = [step for step in self.eval_steps if step > self.steps]
        if not self.grid and late:
            raise PeelError(f"tamper.eval_steps has step {late[0]}, after the attack's last (tamper.steps={self.steps}); "
                            "accepted: steps up to tamper.steps")


@dataclass
class TrackConfig:
    to: list[Literal["wandb", "trackio", "tensorboard"]] = option(
        [], "Experiment trackers that follow the run as it goes: any of wandb, trackio, tensorboard (each needs "
        "pip install 'peel[NAME]'); [] = none."
    )
    project: str = option("peel", "Tracker project (wandb, trackio); TensorBoard writes into the run folder's tensorboard/.")
    name: str | None = option(None, "Run name in the trackers; null = the run folder's name.")
    group: str | None = option(None, "Run group in the trackers; null = the sweep folder's name for a peel sweep's runs, none otherwise.")


@dataclass
class ProbeConfig:
    layers: list[int] | LayerRange = option(
        LayerRange(start=None, end=0, step=1),
        "Layers whose outputs peel probe reads, as in unlearn.layers: {start, end, step} or a list; default every layer.",
        NON_NEGATIVE,
    )
    tasks: list[str] = option(
        [], "Multiple-choice lm-eval tasks probed, e.g. [testbed_forget, testbed_retain]; [] = eval.tasks."
    )
    pooling: Literal["last", "mean"] = option(
        "last", "Hidden state a probe reads: last = the last token's, mean = the mean over the sequence's tokens."
    )
    cloze: Literal["answer", "choice"] = option(
        "answer",
        "How a task whose choices differ per question is probed: answer = the answer's text as a class of the "
        "context's hidden state (answers must recur across questions); choice = a binary probe on context + choice. "
        "A task whose choices are the same letters for every question predicts the answer's index.",
    )
    train_share: float = option(
        0.5, "Share of each task's questions the probes train on; the rest are held out.",
        Bound(minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True),
    )
    seed: int = option(0, "Seed of the train / held-out split (the same for every target) and of the probes.", NON_NEGATIVE)
    limit: int | None = option(None, "Probe only the first N questions of each task; null = every question.", Bound(minimum=2))


@dataclass
class DistillConfig:
    """peel distill RUN: the unlearned model (RUN/model) is the teacher; the student starts as a
    mix of it and a re-initialised copy and learns the teacher's next-token distributions."""

    run: str | None = option(None, "The completed unlearning run folder distilled (its model/ is the teacher); peel distill sets it from RUN.")
    alpha: float = option(
        0.8, "Share of the student's initial weights taken from a fresh initialisation: (1 - alpha) x unlearned + "
        "alpha x re-initialised (the model's own config and init); 0 = the unlearned model, 1 = a fresh init.", FRACTION
    )
    steps: int = option(300, "Distillation optimizer steps; 0 = the mixed model as it is.", NON_NEGATIVE)
    data: DataSource | None = option(
        None, "Text the student learns the teacher's logits on; null = the run's data.retain corpus."
    )
    num_examples: int | None = option(None, "Texts read from distill.data; null = every usable one.", AT_LEAST_ONE)
    with_forget: bool = option(
        False, "Also distill on the run's data.forget texts (as many as distill.num_examples), where the teacher's "
        "next-token distributions are the unlearned ones: the student is shown the unlearning rather than only never "
        "shown the domain (UNDO distills on the whole pretraining mix)."
    )
    lr: float = option(1e-3, "Peak learning rate (AdamW).", POSITIVE)
    lr_scheduler: Literal["linear", "constant", "cosine"] = option("cosine", "Learning-rate schedule over distill.steps.")
    warmup_ratio: float = option(0.1, "Share of the steps spent warming up the learning rate.", FRACTION)
    weight_decay: float = option(0.0, "AdamW weight decay.", NON_NEGATIVE)
    max_grad_norm: float = option(1.0, "Clip the gradient to this norm; 0 = off.", NON_NEGATIVE)
    per_device_batch_size: int = option(32, "Examples per forward pass on one device.", AT_LEAST_ONE)
    global_batch_size: int = option(32, "Examples per optimizer step over all devices; accumulation is derived.", AT_LEAST_ONE)
    seed: int = option(0, "Seed of the fresh initialisation and of the data order.", NON_NEGATIVE)
    checkpoint_every: int = option(100, "Save a resumable checkpoint every N steps; 0 = only when stopped by a signal.", NON_NEGATIVE)


@dataclass
class Config:
    model: ModelConfig = option(ModelConfig(), "The model to unlearn.")
    data: DataConfig = option(DataConfig(), "Forget and retain corpora.")
    unlearn: UnlearnConfig = option(UnlearnConfig(), "The unlearning method.")
    train: TrainConfig = option(TrainConfig(), "Optimisation.")
    eval: EvalConfig = option(EvalConfig(), "Evaluation with lm-eval-harness.")
    tamper: TamperConfig = option(TamperConfig(), "The fine-tuning (tampering) attack.")
    track: TrackConfig = option(TrackConfig(), "Live experiment tracking (wandb, trackio, TensorBoard).")
    probe: ProbeConfig = option(ProbeConfig(), "Linear probes and the logit lens per layer (peel probe).")
    distill: DistillConfig = option(DistillConfig(), "Distillation of an unlearned model into a re-initialised mix (peel distill).")
    output_dir: str = option("runs/default", "The run folder.")
    notes: str = option("", "Free text shown in the Notes column of reports.")


# --------------------------------------------------------------------------------------------
# Loading, overriding and checking


def load_config(path: str | Path | None = None, overrides: list[str] = (), relative_to_file: bool = True) -> Config:
    """Defaults, then the YAML file (and the files it names as `base`), then `dotted.key=value` overrides.

    Relative paths in the file are relative to it; a run folder's config.yaml is read with
    `relative_to_file=False`: it records paths as peel was given them (absolute since paths became
    relative to their file; relative to where peel ran in older runs)."""
    raw = read_yaml(Path(path), relative_to_file=relative_to_file) if path is not None else {}
    config = build(Config, raw, prefix="")
    return apply_overrides(config, overrides)


def read_yaml(path: Path, seen: tuple[Path, ...] = (), relative_to_file: bool = True) -> dict:
    """A config file as a mapping. `base: other.yaml` (relative to the file) is read first and
    deep-merged under it, so a family of configs states only what differs from its base. Paths
    in the file (data, keyword lists, local models) are relative to it too (relative_paths.py)."""
    if path.is_dir():
        raise PeelError(f"config file {str(path)!r} is a folder; accepted: a YAML config file, such as "
                        "configs/testbed_lora.yaml")
    if not path.is_file():
        raise PeelError(f"config file {str(path)!r} does not exist; accepted: a YAML config file")
    if path.resolve() in seen:
        raise PeelError(f"config file {str(path)!r} names itself as a base (through {[str(p) for p in seen]})")
    with reading(f"config file {str(path)!r}", "a YAML mapping of config sections"):
        raw = parse_yaml(path.read_text(), path)
    if not isinstance(raw, dict):
        raise PeelError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if relative_to_file:  # the file's paths, like its base, are relative to it
        raw = resolve_paths(raw, path.parent)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise PeelError(f"config key 'base' in {str(path)!r} got {base!r}; accepted: a path to another config file")
    return deep_merge(read_yaml(path.parent / base, (*seen, path.resolve()), relative_to_file), raw)


def parse_yaml(text: str, path: Path) -> Any:
    """A YAML document's value; a syntax error is one line with where it is (`first_line` of
    PyYAML's message would keep only "while scanning for the next token")."""
    try:
        return yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        problem = error.problem or error.context or "invalid YAML"
        tab = " (YAML indents with spaces, never tabs)" if "'\\t'" in problem else ""
        raise PeelError(f"config file {str(path)!r} is not valid YAML at {where}: {problem}{tab}; "
                        "accepted: a YAML mapping of config sections") from None


def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Return a copy of `config` with each `dotted.key=value` applied (the value is parsed as YAML).

    Relative paths left after them are relative to where peel runs, and are made absolute here,
    so the config.yaml a run keeps means the same from any folder (a sweep's job reads it as a file)."""
    raw = to_dict(config)
    for item in overrides:
        key, separator, text = item.partition("=")
        if not separator or not key:
            raise PeelError(f"override {item!r} is not of the form dotted.key=value")
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        _set_dotted(raw, key, value)
    return build(Config, resolve_paths(raw, Path.cwd()), prefix="")


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            if part not in node:
                raise PeelError(f"unknown config key {'.'.join(parts[: depth + 1])!r} in override {key!r}")
            child = {}  # e.g. unlearn.layers.step when layers is currently a list
            node[part] = child
        node = child
    node[parts[-1]] = value


def to_dict(config: Any) -> Any:
    """Plain dicts and lists, the form saved as config.yaml."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, list):
        return [to_dict(item) for item in config]
    return config


def flatten(values: dict, prefix: str = "", leaves: tuple[str, ...] = (), separator: str = ".") -> dict:
    """`{"train": {"lr": 1}}` -> `{"train.lr": 1}`; mappings under a key in `leaves` stay whole."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in leaves:
            flat.update(flatten(value, f"{prefix}{key}{separator}", leaves, separator))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, checking every key and value."""
    if not isinstance(raw, dict):
        raise PeelError(f"config key {prefix.rstrip('.') or 'config'!r} got {raw!r}; accepted: a mapping of {describe(cls)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise PeelError(f"unknown config key {key!r}; accepted keys here: {', '.join(known)}")
    values = {}
    for name, spec in known.items():
        key = f"{prefix}{name}"
        if name in raw:
            values[name] = check_bound(convert(hints[name], raw[name], key, spec), spec.metadata.get("bound"), key)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise PeelError(f"config key {key!r} is required")
    section = cls(**values)
    if hasattr(section, "validate"):  # checks across a section's keys, after each key's own
        section.validate()
    return section


def check_bound(value: Any, bound: Bound | None, key: str) -> Any:
    """`value` when it (or each number in it, for a list) lies in `bound`; a PeelError otherwise."""
    if bound is None:
        return value
    items = value if isinstance(value, list) else [value]
    for index, item in enumerate(items):
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not bound.accepts(item):
            where = f"{key}[{index}]" if isinstance(value, list) else key
            kind = "an integer" if isinstance(item, int) else "a number"
            raise PeelError(f"config key {where!r} got {item!r}; accepted: {kind} {bound}")
    return value


def convert(hint: Any, value: Any, key: str, spec: dataclasses.Field | None = None) -> Any:
    """Check `value` against type `hint` and return it in that type (ints widen to floats)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        default = spec.default_factory() if spec is not None and spec.default_factory is not dataclasses.MISSING else None
        if isinstance(value, dict) and type(default) is hint:
            # A partial section (e.g. only `lr`) keeps the field's own defaults for the rest.
            value = {**to_dict(default), **value}
        return build(hint, value, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        options = [candidate for candidate in typing.get_args(hint) if candidate is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if isinstance(value, dict):
            for candidate in options:
                if dataclasses.is_dataclass(candidate):
                    return convert(candidate, value, key, spec)
        for candidate in options:
            if dataclasses.is_dataclass(candidate):
                continue
            try:
                return convert(candidate, value, key)
            except PeelError:
                pass
        accepted = " or ".join(describe(candidate) for candidate in typing.get_args(hint))
        raise PeelError(f"config key {key!r} got {value!r}; accepted: {accepted}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise PeelError(f"config key {key!r} got {value!r}; accepted: {', '.join(map(str, choices))}")
        return value
    if origin is dict:
        # Only tamper.grid's points are free mappings; their values are checked where they apply.
        if not isinstance(value, dict) or not all(isinstance(name, str) for name in value):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: a mapping of setting: value")
        return value
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: a list of {describe(item_type)}")
        return [convert(item_type, item, f"{key}[{index}]") for index, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: an integer")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads `5e-4` (no dot) as a string; accept what Python reads as a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PeelError(f"config key {key!r} got {value!r}; accepted: a string")
        return value
    raise TypeError(f"config.py does not know how to check type {hint!r} (key {key})")


def describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return "{" + ", ".join(f.name for f in dataclasses.fields(hint)) + "}"
    if origin is Literal:
        return " | ".join(map(str, typing.get_args(hint)))
    if origin is list:
        return f"list of {describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return "mapping"
    if hint is type(None):
        return "null"
    if hint is bool:
        return "true | false"
    return getattr(hint, "__name__", str(hint))


def help_lines(section: Any = None, prefix: str = "") -> list[str]:
    """Two lines per leaf key (`dotted.key = default`, then its help): the text of `--help`."""
    section = Config() if section is None else section
    lines = []
    for spec in dataclasses.fields(section):
        value = getattr(section, spec.name)
        key = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, LayerRange):
            lines.extend(help_lines(value, prefix=f"{key}."))
        else:
            shown = yaml.safe_dump(to_dict(value), default_flow_style=True, width=math.inf).strip().removesuffix("...").strip()
            bound = spec.metadata.get("bound")
            accepted = f"  ({bound})" if bound is not None else ""
            lines.append(f"  {key} = {shown}{accepted}\n      {spec.metadata.get('help', '')}")
    return lines
