"""Sequential back-to-front unlearning: the phase loop, readable top to bottom.

    setup    check every input, load the model and data, open the run folder
    train    for each target layer L (a phase): for each optimizer step:
               forget: probe (current layers <= L, original layers > L) -> maximum entropy
               retain: keep hidden states / logits near the original on retain data
               combine the two gradients (sum or a sign filter), add L2-SP, clip, step
    finish   save the model (LoRA merged) and the adapter, write run.json

One process or N under torchrun run the same code: each process takes its share of every global
batch, and DDP (LoRA) or FSDP2 (full fine-tuning) averages each objective's gradients across
processes before they are combined (parallel.py says how and why).

A checkpoint every `train.checkpoint_every` steps and at each phase end lets the same command,
run again on the same output_dir, continue where a killed run stopped (checkpoint.py, resume.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from peel import checkpoint, distributed, parallel, resume, run_folder
from peel.config import Config, save_config
from peel.data import collate, load_retain_texts, load_texts, tokenize
from peel.errors import PeelError, RunFailed
from peel.filters import GRADIENT_FILTERS
from peel.models import (
    enable_activation_checkpointing,
    load_model_and_tokenizer,
    load_model_config,
    model_location,
    save_model,
)
from peel.objectives import RETAIN_OBJECTIVES, Batch, forget_backward
from peel.parallel import full_tensor
from peel.schedules import forget_coefficient, progress, retain_coefficient, retain_layer_set, target_layers
from peel.weights import WEIGHTS


@dataclass
class Plan:
    """Everything derived from the config and checked before any weights load."""

    layers: list[int]
    num_layers: int
    accumulation: int  # micro-batches per optimizer step on each process
    examples_per_process: int  # per optimizer step
    steps_per_phase: int


@dataclass
class Session:
    """What every phase of one run works with."""

    config: Config
    plan: Plan
    weights: object  # weights.LoraWeights or weights.FullWeights
    parallelism: object  # parallel.Local, Replicated or Sharded
    tokenizer: object
    forget: list[list[int]]  # token ids of each forget example
    retain: list[list[int]]
    device: torch.device
    output_dir: Path
    bar: tqdm


def make_plan(config: Config, num_layers: int, world_size: int) -> Plan:
    train = config.train
    layers = target_layers(config.unlearn.layers, num_layers)
    if config.unlearn.retain_loss == "l2":
        for layer in layers:
            retain_layer_set(config.unlearn.retain_layers, layer, num_layers)
    for key in ("per_device_batch_size", "global_batch_size", "epochs_per_layer"):
        if getattr(train, key) < 1:
            raise PeelError(f"train.{key}={getattr(train, key)} must be a positive integer")
    per_step = train.per_device_batch_size * world_size
    if train.global_batch_size % per_step:
        raise PeelError(
            f"train.global_batch_size={train.global_batch_size} is not a multiple of per_device_batch_size "
            f"({train.per_device_batch_size}) x processes ({world_size}) = {per_step}"
        )
    steps_per_phase = config.data.num_examples * train.epochs_per_layer // train.global_batch_size
    if steps_per_phase < 1:
        raise PeelError(
            f"data.num_examples={config.data.num_examples} x epochs_per_layer={train.epochs_per_layer} is less than "
            f"one global batch ({train.global_batch_size}); accepted: at least {train.global_batch_size} examples"
        )
    return Plan(
        layers=layers,
        num_layers=num_layers,
        accumulation=train.global_batch_size // per_step,
        examples_per_process=train.global_batch_size // world_size,
        steps_per_phase=steps_per_phase,
    )


def unlearn(config: Config, force: bool = False) -> Path:
    """Run every phase of `config`; return the run folder.

    On an output_dir that holds this config's run, continue it from its last checkpoint (or do
    nothing when it completed); `force` starts over instead.
    """
    started = time.time()
    device = distributed.init()
    output_dir = Path(config.output_dir)

    # ---- setup: every check before anything is written
    model_name = model_location(config.model.name_or_path, config.model.gguf_file)
    model_config = load_model_config(model_name, config.model.revision, config.model.trust_remote_code)
    plan = make_plan(config, model_config.num_hidden_layers, distributed.world_size())
    folder_state = resume.folder_state(output_dir, config, force)
    if folder_state == resume.COMPLETED:
        if distributed.is_main():
            print(f"{output_dir} holds a completed run of this config; nothing to do (--force runs it again)")
        return output_dir
    model, tokenizer = load_model_and_tokenizer(
        model_name,
        dtype=config.train.dtype,
        attn_implementation=config.model.attn_implementation,
        revision=config.model.revision,
        trust_remote_code=config.model.trust_remote_code,
    )
    data = config.data
    forget = tokenize(load_texts(data.forget, data.num_examples, config.train.seed), tokenizer, data.max_length)
    retain_texts = load_retain_texts(data.retain, data.chat, data.num_examples, config.train.seed, tokenizer)
    retain = tokenize(retain_texts, tokenizer, data.max_length)

    baseline = evaluate_baseline(config, model.to(device), tokenizer)
    saved = checkpoint.load(output_dir) if folder_state == resume.RESUME else None

    torch.manual_seed(config.train.seed)  # adapter initialisation
    weights = WEIGHTS[config.unlearn.adapter](model.to(device), config.unlearn.lora)
    if config.train.gradient_checkpointing:
        enable_activation_checkpointing(weights.model)
    parallelism = parallel.wrap(weights, config.unlearn.adapter)  # under torchrun: DDP (LoRA) or FSDP2 (full)
    start = checkpoint.restore(saved, weights, plan.layers)

    distributed.barrier()  # every process has read the folder before the main process changes it
    if distributed.is_main():
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
        resume.rewind(output_dir, saved)
        run_folder.write_json(output_dir / "run.json", run_folder.run_record("running", started, device))

    # ---- train
    total_steps = plan.steps_per_phase * len(plan.layers)
    bar = tqdm(total=total_steps, initial=start.step, desc="unlearn", disable=not distributed.is_main(), dynamic_ncols=True)
    session = Session(config, plan, weights, parallelism, tokenizer, forget, retain, device, output_dir, bar)
    try:
        for phase in range(start.phase, len(plan.layers)):
            resumed = saved if phase == start.phase and start.step_in_phase else None
            run_phase(session, phase, resumed)
            checkpoint.save(output_dir, weights, checkpoint.Position(phase + 1, 0, bar.n))
    except RunFailed as error:
        if distributed.is_main():
            record = run_folder.run_record("failed", started, device, error=str(error))
            run_folder.write_json(output_dir / "run.json", record)
        raise
    finally:
        bar.close()

    # ---- finish
    parallelism.release()
    model = save_results(weights, parallelism, tokenizer, output_dir, config.unlearn.adapter, device)
    if distributed.is_main():
        if config.eval.tasks:
            from peel.evaluation import evaluate_with, write_evaluation

            results = evaluate_with(model, tokenizer, config.eval)
            write_evaluation(output_dir, str(output_dir / "model"), results, baseline)
        record = run_folder.run_record("completed", started, device, total_steps=total_steps, layers=plan.layers)
        run_folder.write_json(output_dir / "run.json", record)
        checkpoint.remove(output_dir)  # model/ holds the result now
    distributed.barrier()
    return output_dir


def run_phase(session: Session, phase: int, resumed: dict | None = None) -> None:
    """All optimizer steps that target the phase's layer, with a fresh optimizer and schedule.

    With `eval.every_phase`, the model is evaluated after the phase's last step and the
    accuracies go into that step's metrics record under "eval". `resumed`, a checkpoint taken
    within this phase, gives the optimizer and scheduler state and the step to continue from.
    """
    from transformers import get_scheduler

    config, plan, weights, bar = session.config, session.plan, session.weights, session.bar
    unlearn, train = config.unlearn, config.train
    layer = plan.layers[phase]
    weights.begin_phase(layer)
    parameters = weights.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)
    scheduler = get_scheduler(
        train.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(train.warmup_ratio * plan.steps_per_phase),
        num_training_steps=plan.steps_per_phase,
    )
    first_step = 0
    if resumed is not None:
        checkpoint.restore_optimizer(resumed, optimizer, scheduler)
        first_step = resumed["position"]["step_in_phase"]
    retain_layers = retain_layer_set(unlearn.retain_layers, layer, plan.num_layers)
    order = example_order(config.data.num_examples, train.epochs_per_layer, train.seed, phase)
    vocab = weights.anatomy.unembedding.weight.shape[0]

    for step_in_phase in range(first_step, plan.steps_per_phase):
        p = progress(step_in_phase, plan.steps_per_phase)
        forget_coef = forget_coefficient(unlearn.remove_coef, p)
        retain_coef = retain_coefficient(unlearn.retain_coef, unlearn.retain_ramp, p)
        indices = process_share(order, step_in_phase, train.global_batch_size)
        micro = [indices[start : start + train.per_device_batch_size] for start in range(0, len(indices), train.per_device_batch_size)]
        random_seed = (train.seed, phase) if unlearn.forget_loss == "random_ce" else None
        pad_token_id, device = session.tokenizer.pad_token_id, session.device
        forget_batches = [make_batch(session.forget, chunk, pad_token_id, device, vocab, random_seed) for chunk in micro]
        retain_batches = [make_batch(session.retain, chunk, pad_token_id, device) for chunk in micro]

        statistics = compute_gradients(
            weights, session.parallelism, parameters, layer, forget_batches, retain_batches, unlearn, retain_layers,
            forget_coef, retain_coef, plan.examples_per_process,
        )
        if not (math.isfinite(statistics["forget_loss"]) and math.isfinite(statistics["retain_loss"])):
            raise RunFailed(
                f"non-finite loss at phase {phase} (layer {layer}) step {step_in_phase}: forget_loss="
                f"{statistics['forget_loss']}, retain_loss={statistics['retain_loss']}; try a lower train.lr or train.dtype=float32"
            )
        max_norm = train.max_grad_norm if train.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        record = {
            "step": bar.n + 1,
            "phase": phase,
            "layer": layer,
            "step_in_phase": step_in_phase,
            "forget_coef": forget_coef,
            "retain_coef": retain_coef,
            **statistics,
            "grad_norm": float(full_tensor(grad_norm)),
            "lr": lr,
        }
        if config.eval.every_phase and step_in_phase == plan.steps_per_phase - 1:
            record["eval"] = evaluate_model(weights.model, session.tokenizer, config.eval)
        if distributed.is_main():
            run_folder.append_jsonl(session.output_dir / "metrics.jsonl", record)
        bar.update(1)
        bar.set_description(f"phase {phase + 1}/{len(plan.layers)} (layer {layer})")
        bar.set_postfix(forget=f"{record['forget_loss']:.3f}", retain=f"{record['retain_loss']:.3f}")
        every = train.checkpoint_every
        if every and record["step"] % every == 0 and step_in_phase + 1 < plan.steps_per_phase:  # phase ends save anyway
            position = checkpoint.Position(phase, step_in_phase + 1, record["step"])
            checkpoint.save(session.output_dir, weights, position, optimizer, scheduler)


def compute_gradients(
    weights, parallelism, parameters, layer, forget_batches, retain_batches, unlearn, retain_layers,
    forget_coef: float, retain_coef: float, examples_per_process: int,
) -> dict[str, float]:
    """Leave one optimizer step's combined gradient in each parameter's `.grad`.

    Forget and retain gradients are accumulated separately over the micro-batches, averaged
    across processes (by DDP or FSDP2, in each objective's last backward), then combined by the
    gradient filter; L2-SP is added after the filter (it is a pull toward the original weights,
    not a data gradient to be compared).
    Returns the step's mean losses and the gradient norms.
    """
    scale = 1.0 / examples_per_process  # per-example losses summed: the same step however the batch is split
    forget_losses = backward_each(
        parallelism, forget_batches, forget_coef,
        lambda batch: forget_backward(weights, batch, layer, unlearn.forget_loss, forget_coef * scale),
    )
    forget_gradients = take_gradients(parameters)
    retain_objective = RETAIN_OBJECTIVES[unlearn.retain_loss]
    retain_losses = backward_each(
        parallelism, retain_batches, retain_coef,
        lambda batch: retain_objective(weights, batch, retain_layers, retain_coef * scale),
    )
    retain_gradients = take_gradients(parameters)

    combine = GRADIENT_FILTERS[unlearn.grad_filter]
    for parameter, forget_gradient, retain_gradient in zip(parameters, forget_gradients, retain_gradients):
        parameter.grad = combine(forget_gradient, retain_gradient)
    l2sp = 0.0
    if unlearn.l2sp_coef:
        penalty = weights.l2sp_penalty(layer)
        (unlearn.l2sp_coef * penalty).backward()
        l2sp = float(full_tensor(penalty.detach()))

    means = torch.stack([forget_losses.mean(), retain_losses.mean()]).float()
    distributed.all_reduce_mean([means])
    forget_loss, retain_loss = means.tolist()
    return {
        "forget_loss": forget_loss,
        "retain_loss": retain_loss,
        "l2sp": l2sp,
        "forget_grad_norm": norm(forget_gradients),
        "retain_grad_norm": norm(retain_gradients),
    }


def backward_each(parallelism, batches, coefficient: float, objective) -> torch.Tensor:
    """`objective` (forward and backward) on each micro-batch; the per-example losses of all.

    Gradients stay on each process until the last micro-batch, whose backward reduces them.
    With a zero coefficient no backward runs at all, so nothing is reduced: every process's
    gradient is zero anyway.
    """
    losses = []
    for index, batch in enumerate(batches):
        with parallelism.accumulate(sync=index == len(batches) - 1 and coefficient != 0):
            losses.append(objective(batch))
    return torch.cat(losses)


def example_order(num_examples: int, epochs: int, seed: int, phase: int) -> list[int]:
    """Each phase sees every example once per epoch, in its own seeded order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + phase)
    return [index for _ in range(epochs) for index in torch.randperm(num_examples, generator=generator).tolist()]


def process_share(order: list[int], step: int, global_batch_size: int) -> list[int]:
    """This process's examples of global batch `step`."""
    batch = order[step * global_batch_size : (step + 1) * global_batch_size]
    share = global_batch_size // distributed.world_size()
    return batch[distributed.rank() * share : (distributed.rank() + 1) * share]


def make_batch(examples, indices, pad_token_id, device, vocab=None, random_seed=None) -> Batch:
    input_ids, attention_mask = collate([examples[index] for index in indices], pad_token_id)
    random_targets = None
    if random_seed is not None:
        # Seeded per example, so targets do not depend on how a batch is split across processes.
        seed, phase = random_seed
        random_targets = torch.stack(
            [
                torch.randint(vocab, (input_ids.shape[1],), generator=torch.Generator().manual_seed((seed * 1_000_003 + phase) * 1_000_033 + index))
                for index in indices
            ]
        ).to(device)
    return Batch(input_ids.to(device), attention_mask.to(device), random_targets)


def take_gradients(parameters) -> list[torch.Tensor]:
    """Detach the accumulated gradients from the parameters (zeros where none arrived)."""
    gradients = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
    for parameter in parameters:
        parameter.grad = None
    return gradients


def norm(tensors: list[torch.Tensor]) -> float:
    """The norm of all tensors together, computed in float32 (shards are gathered into whole norms)."""
    norms = [full_tensor(torch.linalg.vector_norm(tensor, dtype=torch.float32)) for tensor in tensors]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def evaluate_model(model, tokenizer, settings) -> dict[str, float] | None:
    """Accuracy per task of the model as it is now (adapters active).

    Under torchrun every process runs it (FSDP2's forward passes need all of them); only the
    main process gets the accuracies (None elsewhere), and only it writes them.
    """
    from peel.evaluation import evaluate_with

    results = evaluate_with(model, tokenizer, settings)
    return None if results is None else results["accuracy"]


def evaluate_baseline(config: Config, model, tokenizer) -> dict | None:
    """The original model's evaluation, computed once per model and task set and then cached."""
    settings = config.eval
    if not settings.tasks or not distributed.is_main():
        return None
    from peel.evaluation import cached_baseline, evaluate_with

    return cached_baseline(
        model_location(config.model.name_or_path, config.model.gguf_file),
        settings.tasks,
        settings.limit,
        settings.max_length,
        compute=lambda: evaluate_with(model, tokenizer, settings),
        revision=config.model.revision,
    )


def save_results(weights, parallelism, tokenizer, output_dir: Path, adapter: str, device):
    """adapter/ (LoRA) and model/ (merged), each written to a temporary folder and moved into place.

    Every process calls it (under FSDP2 the whole state dict is gathered from the shards); the main
    process writes and gets the merged model back (None elsewhere)."""
    state_dict = parallelism.full_state_dict()
    if not distributed.is_main():
        return None
    if adapter == "lora":
        partial = output_dir / "adapter.partial"
        weights.save_adapter(partial)
        run_folder.replace_folder(partial, output_dir / "adapter")
    partial = output_dir / "model.partial"
    model = weights.merged_model()
    save_model(model, tokenizer, partial, state_dict)
    run_folder.replace_folder(partial, output_dir / "model")
    if state_dict is not None:
        # The trained model is spread over all processes; the main process evaluates a whole copy.
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(output_dir / "model", dtype="auto").to(device)
    return model
