"""The config's sections: every default of a run, with its help and accepted range, in one place.

Each field's `help` is what `peel unlearn --help` prints, so the documentation cannot drift from
the code. The tamper section lives in tamper.py, the whole config in root.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peel.config.fields import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Bound, option


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
    adversary: Literal["none", "finetune", "latent", "sam"] = option(
        "none",
        "Tamper resistance (unlearning/adversaries.py): none; finetune = every adversary_every steps, attack a copy of the trained "
        "parameters with adversary_steps NLL steps on data.adversary and add the forget gradient at the attacked point "
        "(times adversary_coef); latent = take the forget loss under an L2-bounded perturbation of the target layer's "
        "output that latent_steps of projected gradient descent chose to restore the forget text; sam = sharpness-aware "
        "unlearning (Fan et al., ICML 2025): the forget gradient taken at the worst point within sam_rho of the trained "
        "parameters (one ascent step).",
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
    sam_rho: float = option(
        0.01,
        "sam adversary: radius of the ascent step, the L2 norm over all of the phase's trained parameters (the forget "
        "gradient normalised to it); 0 = plain peel.",
        NON_NEGATIVE,
    )
    collapse_components: int = option(
        0,
        "Representation collapse (after CIR, unlearning/collapse.py): the forget gradient reaching the target layer's output "
        "is projected off the top K principal components of the original model's hidden states there on the retain corpus "
        "(computed once per phase); combines with any adversary; 0 = off. At most the model's hidden size.",
        NON_NEGATIVE,
    )


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
class GeneratedText:
    num_texts: int = option(1024, "Texts sampled from the original model (config.model), before forget-keyword texts are dropped.", AT_LEAST_ONE)
    temperature: float = option(1.0, "Sampling temperature (plain sampling: no top-k, no top-p).", POSITIVE)
    max_new_tokens: int = option(128, "Tokens the model writes after each prompt (fewer where it ends the text).", AT_LEAST_ONE)
    prompt_tokens: int = option(
        8, "Tokens of each prompt: the opening of a retain text (data.retain), or of a neutral seed phrase, in turn.", AT_LEAST_ONE
    )
    batch_size: int = option(32, "Prompts sampled together.", AT_LEAST_ONE)


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
    data: Literal["generated"] | DataSource | None = option(
        None, "Text the student learns the teacher's logits on: a data source; generated = distill.generated.num_texts texts the "
        "original model (config.model) writes from the openings of the retain texts and of neutral seed phrases, seeded by "
        "distill.seed, cached in the output folder's generated.json, texts with a forget keyword (data.forget.keywords) "
        "dropped; null = the run's data.retain corpus."
    )
    generated: GeneratedText = option(GeneratedText(), "Sampling of distill.data: generated.")
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
