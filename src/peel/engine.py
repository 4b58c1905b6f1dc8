"""Sequential back-to-front unlearning: the phase loop, readable top to bottom.

    setup    check every input (planning.py), load the model, open the run folder and the trackers
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

from peel import checkpoint, distributed, parallel, preemption, resume, run_folder, tracking
from peel.config import Config, save_config, to_dict
from peel.batches import example_order, make_batch, process_share
from peel.errors import Preempted, RunFailed, first_line
from peel.filters import GRADIENT_FILTERS
from peel.models import enable_activation_checkpointing, load_model, model_location, save_model
from peel.objectives import RETAIN_OBJECTIVES, forget_backward
from peel.optimizers import make_optimizer
from peel.parallel import full_tensor
from peel.planning import Plan, prepare
from peel.schedules import forget_coefficient, progress, retain_coefficient, retain_layer_set
from peel.update_rank import update_rank
from peel.weights import WEIGHTS


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
    forget_masks: list[list[int]] | None  # keyword masks of the forget examples (None: every token counts)
    device: torch.device
    output_dir: Path
    bar: tqdm
    tracker: tracking.Tracking  # wandb / trackio / TensorBoard, as track.to asks (main process only)


def unlearn(config: Config, force: bool = False, dry_run: bool = False) -> Path:
    """Run every phase of `config`; return the run folder.

    On an output_dir that holds this config's run, continue it from its last checkpoint (or do
    nothing when it completed); `force` starts over instead. `dry_run` stops after the checks.
    Once the run folder exists, a failure marks run.json `failed` with the reason (and the
    traceback in error.log when the failure was not a known one); a signal from the scheduler
    stops it after the current step with a checkpoint and run.json `preempted`.
    """
    started = time.time()
    device = distributed.init()
    output_dir = Path(config.output_dir).expanduser()

    # ---- setup: every check before anything is written
    prepared = prepare(config, force)
    plan = prepared.plan
    if dry_run or prepared.folder_state == resume.COMPLETED:
        if distributed.is_main():
            completed = f"{output_dir} holds a completed run of this config; nothing to do (--force runs it again)"
            print(f"checked: {plan.describe()}" if dry_run else completed)
        return output_dir
    model = load_model(
        model_location(config.model.name_or_path, config.model.gguf_file),
        dtype=config.train.dtype,
        attn_implementation=config.model.attn_implementation,
        revision=config.model.revision,
        trust_remote_code=config.model.trust_remote_code,
    )
    tokenizer = prepared.tokenizer
    baseline = evaluate_baseline(config, model.to(device), tokenizer)
    saved = checkpoint.load(output_dir) if prepared.folder_state == resume.RESUME else None

    torch.manual_seed(config.train.seed)  # adapter initialisation
    weights = WEIGHTS[config.unlearn.adapter](model.to(device), config.unlearn.lora)
    if config.train.gradient_checkpointing:
        enable_activation_checkpointing(weights.model)
    parallelism = parallel.wrap(weights, config.unlearn.adapter)  # under torchrun: DDP (LoRA) or FSDP2 (full)
    start = checkpoint.restore(saved, weights, plan.layers)

    tracker = tracking.NOT_TRACKED
    distributed.barrier()  # every process has read the folder before the main process changes it
    if distributed.is_main():
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
        # Before the rewind: metrics.jsonl still says which steps the trackers were given.
        tracker = tracking.start(config.track, to_dict(config), output_dir, prepared.folder_state == resume.RESUME)
        resume.rewind(output_dir, saved)
        run_folder.write_json(output_dir / "run.json", run_folder.run_record("running", started, device))

    total_steps = plan.steps_per_phase * len(plan.layers)
    bar = tqdm(total=total_steps, initial=start.step, desc="unlearn", disable=not distributed.is_main(), dynamic_ncols=True)
    session = Session(config, plan, weights, parallelism, tokenizer, prepared.forget, prepared.retain,
                      prepared.forget_masks, device, output_dir, bar, tracker)
    try:
        # ---- train
        with preemption.stop_on_signals():
            for phase in range(start.phase, len(plan.layers)):
                resumed = saved if phase == start.phase and start.step_in_phase else None
                run_phase(session, phase, resumed)
                checkpoint.save(output_dir, weights, checkpoint.Position(phase + 1, 0, bar.n))
        bar.close()

        # ---- finish: results go to *.partial folders and move into place only once all of them are done
        rank = update_rank(weights.update_deltas())  # before LoRA merges: the adapters are the update
        parallelism.release()
        model = save_results(weights, parallelism, tokenizer, output_dir, config.unlearn.adapter, device)
        if distributed.is_main():
            if config.eval.tasks:
                from peel.evaluation import evaluate_with, write_evaluation

                results = evaluate_with(model, tokenizer, config.eval)
                write_evaluation(output_dir, str(output_dir / "model"), results, baseline)
            publish_results(output_dir, config.unlearn.adapter)
            record = run_folder.run_record("completed", started, device, total_steps=total_steps, layers=plan.layers,
                                           update_rank=rank)
            run_folder.write_json(output_dir / "run.json", record)
            checkpoint.remove(output_dir)  # model/ holds the result now
        distributed.barrier()
    except Preempted:
        if distributed.is_main():
            run_folder.write_json(output_dir / "run.json", run_folder.run_record("preempted", started, device, step=bar.n))
        raise
    except BaseException as error:
        log = run_folder.mark_failed(output_dir, error, started, device) if distributed.is_main() else None
        if log is None:
            raise  # a known failure (its message says it all), an interruption, or another process's copy
        raise RunFailed(f"{type(error).__name__}: {first_line(error)}; full traceback in {log}") from error
    finally:
        bar.close()
        tracker.finish()  # run.json (and eval.json) as they were left: the run's summary
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
    optimizer = make_optimizer(train.optimizer, parameters, weights.anatomy, train.lr, train.weight_decay,
                               train.muon_lr, train.muon_momentum)
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
    order = example_order(plan.num_examples, train.epochs_per_layer, train.seed, phase)
    vocab = weights.anatomy.unembedding.weight.shape[0]

    for step_in_phase in range(first_step, plan.steps_per_phase):
        p = progress(step_in_phase, plan.steps_per_phase)
        forget_coef = forget_coefficient(unlearn.remove_coef, p)
        retain_coef = retain_coefficient(unlearn.retain_coef, unlearn.retain_ramp, p)
        indices = process_share(order, step_in_phase, train.global_batch_size)
        micro = [indices[start : start + train.per_device_batch_size] for start in range(0, len(indices), train.per_device_batch_size)]
        random_seed = (train.seed, phase) if unlearn.forget_loss == "random_ce" else None
        pad_token_id, device = session.tokenizer.pad_token_id, session.device
        forget_batches = [make_batch(session.forget, chunk, pad_token_id, device, vocab, random_seed, session.forget_masks)
                          for chunk in micro]
        retain_batches = [make_batch(session.retain, chunk, pad_token_id, device) for chunk in micro]

        statistics = compute_gradients(
            weights, session.parallelism, parameters, layer, forget_batches, retain_batches, unlearn, retain_layers,
            forget_coef, retain_coef, plan.examples_per_process,
        )
        stop = statistics.pop("stop")
        if not (math.isfinite(statistics["forget_loss"]) and math.isfinite(statistics["retain_loss"])):
            raise RunFailed(
                f"non-finite loss at phase {phase} (layer {layer}) step {step_in_phase}: forget_loss="
                f"{statistics['forget_loss']}, retain_loss={statistics['retain_loss']}; try a lower train.lr or train.dtype=float32"
            )
        max_norm = train.max_grad_norm if train.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        # Every group follows one schedule: its factor times train.lr (and train.muon_lr) is the step's rate.
        factor = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["initial_lr"]
        rates = {"lr": train.lr * factor, **({"muon_lr": train.muon_lr * factor} if train.optimizer == "muon" else {})}
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
            **rates,
        }
        if config.eval.every_phase and step_in_phase == plan.steps_per_phase - 1:
            record.update(evaluate_model(weights.model, session.tokenizer, config.eval))
        if distributed.is_main():
            run_folder.append_jsonl(session.output_dir / "metrics.jsonl", record)
            session.tracker.log(record)
        bar.update(1)
        bar.set_description(f"phase {phase + 1}/{len(plan.layers)} (layer {layer})")
        bar.set_postfix(forget=f"{record['forget_loss']:.3f}", retain=f"{record['retain_loss']:.3f}")
        every = train.checkpoint_every
        position = checkpoint.Position(phase, step_in_phase + 1, record["step"])
        if stop:
            # Asked to stop (preemption): keep this step, so the requeued run continues from the next.
            checkpoint.save(session.output_dir, weights, position, optimizer, scheduler)
            raise Preempted(f"stopped by {preemption.requested() or 'another process'} after step {record['step']}")
        if every and record["step"] % every == 0 and step_in_phase + 1 < plan.steps_per_phase:  # phase ends save anyway
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
    Returns the step's mean losses, the gradient norms and whether any process was asked to stop.
    """
    scale = 1.0 / examples_per_process  # per-example losses summed: the same step however the batch is split
    forget_losses = backward_each(
        parallelism, forget_batches, forget_coef,
        lambda batch: forget_backward(weights, batch, layer, unlearn, forget_coef * scale),
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

    # The stop flag and the keyword masks' token counts ride with the losses' one reduction, so
    # every process agrees to stop after the same step (a checkpoint is collective) and the share
    # is of all processes' tokens, without another synchronisation.
    stop_flag = forget_losses.new_tensor(float(preemption.requested() is not None))
    counted = sum(batch.counted.sum() for batch in forget_batches).float()
    real = sum(batch.attention_mask.sum() for batch in forget_batches).float()
    means = torch.stack([forget_losses.mean(), retain_losses.mean(), stop_flag, counted, real]).float()
    distributed.all_reduce_mean([means])
    forget_loss, retain_loss, stop, counted, real = means.tolist()
    statistics = {
        "stop": stop > 0,
        "forget_loss": forget_loss,
        "retain_loss": retain_loss,
        "l2sp": l2sp,
        "forget_grad_norm": norm(forget_gradients),
        "retain_grad_norm": norm(retain_gradients),
    }
    if forget_batches[0].loss_mask is not None:
        statistics["forget_token_share"] = counted / real
    return statistics


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


def evaluate_model(model, tokenizer, settings) -> dict:
    """The metrics record's view of the model as it is now (adapters active): {"eval": {task:
    accuracy}, "eval_correct_prob": {task: correct_prob}}.

    Under torchrun every process runs it (FSDP2's forward passes need all of them); only the
    main process gets the results (an empty record elsewhere), and only it writes them.
    """
    from peel.evaluation import evaluate_with

    results = evaluate_with(model, tokenizer, settings)
    if results is None:
        return {}
    return {"eval": results["accuracy"], **({"eval_correct_prob": results["correct_prob"]} if results["correct_prob"] else {})}


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
    """adapter.partial/ (LoRA) and model.partial/ (merged): `publish_results` moves them into place.

    Every process calls it (under FSDP2 the whole state dict is gathered from the shards); the main
    process writes and gets the merged model back (None elsewhere)."""
    state_dict = parallelism.full_state_dict()
    if not distributed.is_main():
        return None
    if adapter == "lora":
        weights.save_adapter(output_dir / "adapter.partial")
    model = weights.merged_model()
    save_model(model, tokenizer, output_dir / "model.partial", state_dict)
    if state_dict is not None:
        # The trained model is spread over all processes; the main process evaluates a whole copy.
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(output_dir / "model.partial", dtype="auto").to(device)
    return model


def publish_results(output_dir: Path, adapter: str) -> None:
    """Move the finished model (and adapter) into place: a run folder has a model/ only once it completed."""
    if adapter == "lora":
        run_folder.replace_folder(output_dir / "adapter.partial", output_dir / "adapter")
    run_folder.replace_folder(output_dir / "model.partial", output_dir / "model")
