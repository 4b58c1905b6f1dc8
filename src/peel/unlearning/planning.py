"""Setup before training: every check that needs no model weights, and the run's shape.

`prepare` is what `peel unlearn --dry-run` runs: the output folder, the trackers' libraries, the
model's configuration and tokenizer, the corpora, the plan (layers, examples, steps,
accumulation) and the evaluation tasks are all checked here, so a bad input fails in seconds,
before weights load or a run folder is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from peel import distributed
from peel.runs import folder as run_folder, resume, tracking
from peel.unlearning.adversaries import refuse_sharding
from peel.attacks.plan import grid_attacks
from peel.config import Config
from peel.data import load_retain_texts, load_texts, tokenize
from peel.errors import PeelError
from peel.unlearning.masks import keyword_pattern, read_keywords, tokenize_with_masks
from peel.unlearning.objectives import FORGET_OBJECTIVES
from peel.models import load_model_config, load_tokenizer, model_location
from peel.unlearning.schedules import retain_layer_set
from peel.layers import target_layers


@dataclass
class Plan:
    """Everything derived from the config and checked before any weights load."""

    layers: list[int]
    num_layers: int
    num_examples: int  # forget (and retain) examples per phase
    accumulation: int  # micro-batches per optimizer step on each process
    examples_per_process: int  # per optimizer step
    steps_per_phase: int

    def describe(self) -> str:
        return (
            f"layers {self.layers} of {self.num_layers}; {self.num_examples} forget and retain examples per phase; "
            f"{self.steps_per_phase} optimizer steps per phase ({self.steps_per_phase * len(self.layers)} in all), "
            f"{self.accumulation} micro-batch(es) per step on each process"
        )


def check_layers(config: Config, num_layers: int) -> list[int]:
    """The target layers, checked against the model (and the l2 retain loss's layers with them)."""
    layers = target_layers(config.unlearn.layers, num_layers)
    if config.unlearn.retain_loss == "l2":
        for layer in layers:
            retain_layer_set(config.unlearn.retain_layers, layer, num_layers)
    return layers


def make_plan(config: Config, num_layers: int, world_size: int, num_examples: int) -> Plan:
    """The run's shape; `num_examples` is what the corpora gave (at most data.num_examples)."""
    train = config.train
    layers = check_layers(config, num_layers)
    per_step = train.per_device_batch_size * world_size
    if train.global_batch_size % per_step:
        raise PeelError(
            f"train.global_batch_size={train.global_batch_size} is not a multiple of per_device_batch_size "
            f"({train.per_device_batch_size}) x processes ({world_size}) = {per_step}"
        )
    steps_per_phase = num_examples * train.epochs_per_layer // train.global_batch_size
    if steps_per_phase < 1:
        raise PeelError(
            f"{num_examples} examples x train.epochs_per_layer={train.epochs_per_layer} is less than one global batch "
            f"(train.global_batch_size={train.global_batch_size}); accepted: at least {train.global_batch_size} examples per phase"
        )
    return Plan(
        layers=layers,
        num_layers=num_layers,
        num_examples=num_examples,
        accumulation=train.global_batch_size // per_step,
        examples_per_process=train.global_batch_size // world_size,
        steps_per_phase=steps_per_phase,
    )


def check_parallel(config: Config, world_size: int) -> None:
    """Combinations of engine, adapter and optimizer that cannot run, refused before anything loads."""
    train, adapter = config.train, config.unlearn.adapter
    if train.parallel == "ddp" and adapter == "full":
        raise PeelError("train.parallel=ddp with unlearn.adapter=full: full fine-tuning is sharded with FSDP2; "
                        "accepted: train.parallel auto or fsdp")
    sharded = adapter == "full" or train.parallel == "fsdp"
    if world_size > 1:
        refuse_sharding(config.unlearn.adversary, "fsdp" if sharded else "ddp")
    if train.optimizer == "muon" and sharded and world_size > 1:
        raise PeelError(f"train.optimizer=muon under FSDP2 ({world_size} processes, unlearn.adapter={adapter}, "
                        f"train.parallel={train.parallel}) is not supported: Muon's update needs whole matrices and FSDP2 "
                        "holds shards; accepted: one process, or LoRA with train.parallel ddp or auto")


def check_collapse(components: int, hidden_size: int | None) -> None:
    """unlearn.collapse_components can name no more directions than the hidden state has."""
    if hidden_size is not None and components > hidden_size:
        raise PeelError(f"unlearn.collapse_components={components} is larger than the model's hidden size ({hidden_size}); "
                        f"accepted: 0..{hidden_size}")


@dataclass
class Prepared:
    """A run checked from end to end, before any weights load (what --dry-run shows)."""

    plan: Plan
    folder_state: str  # resume.NEW, RESUME or COMPLETED
    tokenizer: object
    forget: list[list[int]]
    retain: list[list[int]]
    forget_masks: list[list[int]] | None  # per forget token: inside a keyword (1) or not; None = no keywords
    adversary: list[list[int]] | None = None  # the finetune adversary's own attack text; None = the forget corpus


def prepare(config: Config, force: bool = False) -> Prepared:
    """Every check that can be made without the model's weights: the output folder, the trackers'
    libraries, the model's configuration and tokenizer, the corpora, the plan, the evaluation
    tasks. Writes nothing."""
    output_dir = run_folder.check_writable(config.output_dir, "output_dir")
    tracking.check(config.track.to)
    grid_attacks(config, [])  # the attacks peel tamper RUN will run: a bad grid point fails now, not after training
    model = config.model
    name = model_location(model.name_or_path, model.gguf_file)
    model_config = load_model_config(name, model.revision, model.trust_remote_code)
    check_layers(config, model_config.num_hidden_layers)  # cheap, so before the corpora load
    check_parallel(config, distributed.world_size())
    unlearn = config.unlearn
    FORGET_OBJECTIVES[unlearn.forget_loss].check(unlearn, model_config.vocab_size)
    check_collapse(unlearn.collapse_components, getattr(model_config, "hidden_size", None))
    folder_state = resume.folder_state(output_dir, config, force, uncompared=("distill.",))  # peel distill's section: unread here
    tokenizer = load_tokenizer(name, model.revision, model.trust_remote_code)
    data, seed = config.data, config.train.seed
    forget_texts = load_texts(data.forget, data.num_examples, seed)
    forget = tokenize(forget_texts, tokenizer, data.max_length)
    forget_masks = None
    if data.forget.keywords is not None:
        pattern = keyword_pattern(read_keywords(data.forget.keywords))
        _, forget_masks = tokenize_with_masks(forget_texts, tokenizer, data.max_length, pattern)
    # Without a count (the default), every forget text is used with as many retain texts as there are.
    required = data.num_examples is not None
    retain_texts = load_retain_texts(data.retain, data.chat, len(forget), seed, tokenizer, required)
    retain = tokenize(retain_texts, tokenizer, data.max_length)
    num_examples = min(len(forget), len(retain))  # examples are drawn in forget/retain pairs
    plan = make_plan(config, model_config.num_hidden_layers, distributed.world_size(), num_examples)
    if config.eval.tasks:
        from peel.evaluation.harness import manager_for

        manager_for(config.eval.tasks, config.eval.include_path)  # unknown task names fail now, not after training
    masks = None if forget_masks is None else forget_masks[:num_examples]
    adversary = None
    if unlearn.adversary == "finetune" and data.adversary.path is not None:
        adversary = tokenize(load_texts(data.adversary, data.num_examples, seed, required=False), tokenizer, data.max_length)
    return Prepared(plan, folder_state, tokenizer, forget[:num_examples], retain[:num_examples], masks, adversary)
