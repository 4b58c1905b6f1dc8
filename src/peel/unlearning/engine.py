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

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from peel import distributed, parallel
from peel.config import Config
from peel.errors import Preempted, RunFailed
from peel.evaluation import evaluate_with
from peel.anatomy import compile_layers
from peel.models import save_model
from peel.parallel import full_tensor
from peel.runs import checkpoint, folder as run_folder, lifecycle, preemption, resume, tracking
from peel.runs.folder import ADAPTER_FOLDER, METRICS_FILE, MODEL_FOLDER, PARTIAL_SUFFIX
from peel.unlearning import recompute
from peel.unlearning.adversaries import ADVERSARIES, refuse_sharding
from peel.unlearning.batches import Corpus, RandomTargets, example_order, process_share
from peel.unlearning.collapse import retain_components
from peel.unlearning.gradients import compute_gradients, read
from peel.unlearning.objectives import FORGET_OBJECTIVES
from peel.unlearning.optimizers import make_optimizer
from peel.unlearning.phase import Phase
from peel.unlearning.planning import Plan, prepare
from peel.unlearning.schedules import forget_coefficient, progress, retain_coefficient, retain_layer_set
from peel.unlearning.update_rank import update_rank
from peel.unlearning.weights import WEIGHTS


@dataclass
class Session:
    """What every phase of one run works with."""

    config: Config
    plan: Plan
    weights: object  # weights.LoraWeights or weights.FullWeights
    parallelism: object  # parallel.Local, Replicated or Sharded
    tokenizer: object
    forget: Corpus  # the forget examples (and their keyword masks), padded on the device
    retain: Corpus
    adversary: Corpus  # the finetune adversary's attack text (the forget corpus unless data.adversary.path)
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
    if dry_run and distributed.is_main():
        from peel.unlearning.dry_run import unlearn_lines

        print("\n".join(["checked, nothing written:", *unlearn_lines(config, plan, prepared.folder_state, distributed.world_size())]))
    if dry_run or prepared.folder_state == resume.COMPLETED:
        if distributed.is_main() and not dry_run:
            print(f"{output_dir} holds a completed run of this config; nothing to do (--force runs it again)")
        return output_dir
    model = lifecycle.load_original(config.model, config.train.dtype)
    tokenizer = prepared.tokenizer
    baseline = lifecycle.original_baseline(config.model, config.eval, lambda: evaluate_with(model.to(device), tokenizer, config.eval))
    saved = checkpoint.load(output_dir) if prepared.folder_state == resume.RESUME else None

    # Under torchrun: DDP, or FSDP2 for full fine-tuning and for LoRA on a model too large for one
    # device. A model to be sharded stays on the host until FSDP2 moves each shard to the device.
    engine = parallel.choose(config.train.parallel, config.unlearn.adapter, model, device)
    refuse_sharding(config.unlearn.adversary, engine)  # auto may choose FSDP2 only now that the weights are known
    torch.manual_seed(config.train.seed)  # adapter initialisation
    weights = WEIGHTS[config.unlearn.adapter](model if engine == "fsdp" else model.to(device), config.unlearn.lora)
    recompute.apply(weights.model, weights.anatomy, config.train.gradient_checkpointing)
    if config.train.compile:
        compile_layers(weights.anatomy)
    parallelism = parallel.ENGINES[engine](weights)
    start = checkpoint.restore(saved, weights, plan.layers)

    tracker = lifecycle.open_run(output_dir, config, saved, prepared.folder_state == resume.RESUME, started, device, engine)

    total_steps = plan.steps_per_phase * len(plan.layers)
    bar = tqdm(total=total_steps, initial=start.step, desc="unlearn", disable=not distributed.is_main(), dynamic_ncols=True)
    pad = tokenizer.pad_token_id
    forget = Corpus(prepared.forget, pad, device, prepared.forget_masks)
    attack_text = forget if prepared.adversary is None else Corpus(prepared.adversary, pad, device)
    session = Session(config, plan, weights, parallelism, tokenizer, forget, Corpus(prepared.retain, pad, device), attack_text,
                      device, output_dir, bar, tracker)
    with lifecycle.attended(output_dir, started, device, tracker, lambda: bar.n), contextlib.closing(bar):
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
        model = save_results(weights, parallelism, tokenizer, output_dir, config, device)
        if distributed.is_main():
            lifecycle.evaluate_result(model, tokenizer, config.eval, output_dir, baseline)
            folders = (ADAPTER_FOLDER, MODEL_FOLDER) if config.unlearn.adapter == "lora" else (MODEL_FOLDER,)
            lifecycle.complete(output_dir, folders, started, device, total_steps=total_steps, layers=plan.layers,
                               update_rank=rank, parallel=engine)
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
    order = example_order(plan.num_examples, train.epochs_per_layer, train.seed, phase)
    vocab = weights.anatomy.unembedding.weight.shape[0]
    targets = RandomTargets(train.seed, phase, vocab) if FORGET_OBJECTIVES[unlearn.forget_loss].random_targets else None
    this_phase = Phase(
        weights=weights, parallelism=session.parallelism, parameters=parameters, layer=layer, unlearn=unlearn,
        examples_per_process=plan.examples_per_process,
        retain_layers=tuple(retain_layer_set(unlearn.retain_layers, layer, plan.num_layers)),
        chunk_tokens=train.loss_chunk_tokens, number=phase, steps=plan.steps_per_phase, seed=train.seed,
        global_batch_size=train.global_batch_size, per_device_batch_size=train.per_device_batch_size,
        attack_text=session.adversary,
        # once per phase, from the original model: a resumed phase computes the same directions
        collapse_basis=retain_components(weights, session.retain, layer, unlearn.collapse_components, train.per_device_batch_size),
    )
    adversary = ADVERSARIES[unlearn.adversary](this_phase)

    for step_in_phase in range(first_step, plan.steps_per_phase):
        p = progress(step_in_phase, plan.steps_per_phase)
        forget_coef = forget_coefficient(unlearn.remove_coef, p)
        retain_coef = retain_coefficient(unlearn.retain_coef, unlearn.retain_ramp, p)
        micro = process_share(order, step_in_phase, train.global_batch_size).split(train.per_device_batch_size)
        forget_batches = [session.forget.batch(indices, targets) for indices in micro]
        retain_batches = [session.retain.batch(indices) for indices in micro]

        statistics = compute_gradients(this_phase, adversary, forget_batches, retain_batches, forget_coef, retain_coef, step_in_phase)
        max_norm = train.max_grad_norm if train.max_grad_norm > 0 else math.inf
        statistics["grad_norm"] = full_tensor(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
        statistics = read(statistics)  # the step's one wait for the device
        stop = statistics.pop("stop") > 0
        if not (math.isfinite(statistics["forget_loss"]) and math.isfinite(statistics["retain_loss"])):
            raise RunFailed(
                f"non-finite loss at phase {phase} (layer {layer}) step {step_in_phase}: forget_loss="
                f"{statistics['forget_loss']}, retain_loss={statistics['retain_loss']}; try a lower train.lr or train.dtype=float32"
            )
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
            **rates,
        }
        if config.eval.every_phase and step_in_phase == plan.steps_per_phase - 1:
            record.update(evaluate_model(weights.model, session.tokenizer, config.eval))
        if distributed.is_main():
            run_folder.append_jsonl(session.output_dir / METRICS_FILE, record)
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


def evaluate_model(model, tokenizer, settings) -> dict:
    """The metrics record's view of the model as it is now (adapters active): {"eval": {task:
    accuracy}, "eval_correct_prob": {task: correct_prob}}.

    Under torchrun every process runs it (FSDP2's forward passes need all of them); only the
    main process gets the results (an empty record elsewhere), and only it writes them.
    """
    results = evaluate_with(model, tokenizer, settings)
    if results is None:
        return {}
    return {"eval": results["accuracy"], **({"eval_correct_prob": results["correct_prob"]} if results["correct_prob"] else {})}


def save_results(weights, parallelism, tokenizer, output_dir: Path, config: Config, device):
    """adapter.partial/ (LoRA) and model.partial/ (merged): `publish_results` moves them into place.

    Every process calls it (under FSDP2 the whole state dict is gathered from the shards); the main
    process writes and gets the merged model back (None elsewhere)."""
    state_dict = parallelism.full_state_dict()
    if not distributed.is_main():
        return None
    adapter = config.unlearn.adapter
    if adapter == "lora" and state_dict is not None:
        # Sharded adapters: the main process rebuilds the LoRA model on the host from the original
        # weights and the gathered values, and saves and merges it as in one process.
        weights = WEIGHTS["lora"](lifecycle.load_original(config.model, config.train.dtype), config.unlearn.lora)
        weights.model.load_state_dict(state_dict)
        state_dict = None
    if adapter == "lora":
        weights.save_adapter(output_dir / (ADAPTER_FOLDER + PARTIAL_SUFFIX))
    model = weights.merged_model()
    save_model(model, tokenizer, output_dir / (MODEL_FOLDER + PARTIAL_SUFFIX), state_dict)
    if state_dict is not None:
        # The trained model is spread over all processes; the main process evaluates a whole copy.
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(output_dir / (MODEL_FOLDER + PARTIAL_SUFFIX), dtype="auto")
    return model.to(device)
