"""Distillation after unlearning (after UNDO): `peel distill RUN`, readable top to bottom.

    setup    check RUN (a completed unlearning run), the output folder, the trackers, the text and
             the batch shape; load the teacher (RUN/model) and make the student: the teacher's
             weights mixed with a fresh initialisation, (1 - alpha) x unlearned + alpha x fresh;
             with distill.data: generated, the original model writes the text first (generation.py)
    train    for each optimizer step: KL(teacher || student) of the next-token distributions on
             the step's texts (retain text by default; with distill.with_forget the forget text
             too), averaged per token, then per example
    finish   save the student as model/ (safetensors, loadable by transformers), evaluate it,
             write run.json

Unlearning that only hides knowledge leaves it in the weights, where a few steps of fine-tuning
find it again. The student inherits the teacher's behaviour through its outputs on retain text
only, and a share of its weights is noise: what the teacher hid, and the student was never shown,
has less left to come back from. With distill.with_forget it is also shown the teacher's unlearned
outputs on the forget text, as UNDO distills on the whole pretraining mix. With distill.data:
generated it learns on text the original model wrote (far more than the retain passages, and as
general as the model), texts holding a forget keyword dropped.

The run's life (its folder, checkpoints, resuming after a signal, tracking, the failed or preempted
run.json) is runs/lifecycle.py's, as `peel unlearn`'s is. Under torchrun each process takes its
share of every global batch and DDP (parallel.Replicated) averages the student's gradients.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from peel import distributed, generation, parallel
from peel.attacks.plan import grid_attacks
from peel.anatomy import Anatomy, final_hidden_states, find_anatomy, logits
from peel.config import Config, to_dict
from peel.data import load_texts, tokenize
from peel.errors import PeelError, Preempted, RunFailed
from peel.models import DTYPES, load_model, load_tokenizer, save_model
from peel.runs import checkpoint, folder as run_folder, lifecycle, preemption, resume, tracking
from peel.runs.folder import CONFIG_FILE, GENERATED_FILE, METRICS_FILE, MODEL_FOLDER, PARTIAL_SUFFIX
from peel.unlearning import losses
from peel.unlearning.batches import Corpus, example_order, process_share
from peel.unlearning.chunked import Outputs, chunk_width, token_means
from peel.unlearning.masks import keyword_pattern, read_keywords


@dataclass
class Network:
    """A causal LM as the losses and checkpoints read it. The student trains every parameter."""

    model: nn.Module
    anatomy: Anatomy

    def changed_parameters(self) -> dict[str, nn.Parameter]:
        """What a checkpoint keeps: every parameter (a fresh share makes all of them differ from RUN/model)."""
        return dict(self.model.named_parameters())

    def begin_phase(self, layer: int) -> None:
        """Distillation has no phases; `checkpoint.restore` replays none."""


class StudentForward(nn.Module):
    """What DDP wraps: the student's outputs as the KL reads them (final hidden states when the loss
    is taken a chunk of positions at a time, whole logits otherwise)."""

    def __init__(self, student: Network):
        super().__init__()
        self.model = student.model
        self.anatomy = student.anatomy

    def forward(self, input_ids: torch.Tensor, hidden: bool) -> torch.Tensor:
        # Right-padded batches need no attention mask (objectives.Batch.model_mask says why).
        if hidden:
            return final_hidden_states(self.anatomy, input_ids, None)
        return logits(self.model, input_ids, None)


@dataclass
class Prepared:
    """Everything checked before any weights load (what --dry-run shows)."""

    teacher: Path  # RUN/model
    folder_state: str  # resume.NEW, RESUME or COMPLETED
    tokenizer: object
    examples: list[list[int]]  # with distill.data: generated, only the forget texts of with_forget (the rest come later)
    accumulation: int  # micro-batches per optimizer step on each process
    prompts: list[list[int]] | None = None  # distill.data: generated: what the original model is prompted with

    def describe(self, steps: int, alpha: float) -> str:
        texts = f"{len(self.examples)} texts" if self.prompts is None else \
            f"{len(self.prompts)} texts the original model writes (generated.json) and {len(self.examples)} more"
        return (f"teacher {self.teacher}; student (1 - {alpha:g}) x teacher + {alpha:g} x fresh init; {texts}; "
                f"{steps} optimizer steps, {self.accumulation} micro-batch(es) per step on each process")


def check_run(run: str | None) -> Path:
    """`run` as a Path, once it is known to be a completed unlearning run folder with a model/."""
    accepted = "a run folder that peel unlearn completed (config.yaml, run.json status completed, model/)"
    if run is None:
        raise PeelError(f"distill.run is not set; accepted: {accepted}")
    folder = Path(run).expanduser()
    if not (folder / CONFIG_FILE).is_file():
        raise PeelError(f"RUN {run!r} is not a run folder (no config.yaml); accepted: {accepted}")
    status = run_folder.read_run_record(folder).get("status")
    if status != "completed" or not (folder / MODEL_FOLDER / "config.json").is_file():
        raise PeelError(f"RUN {run!r} holds no completed run (run.json status {status!r}); accepted: {accepted}")
    return folder


def prepare(config: Config, force: bool = False) -> Prepared:
    """Every check that needs no weights: RUN, the output folder, the trackers, the engine, the text,
    the batch shape. Writes nothing."""
    settings = config.distill
    teacher = check_run(settings.run) / MODEL_FOLDER
    output_dir = run_folder.check_writable(config.output_dir, "output_dir")
    if output_dir.resolve() == teacher.parent.resolve():
        raise PeelError(f"output_dir {config.output_dir!r} is RUN itself; accepted: another folder (the default is RUN/distill)")
    tracking.check(config.track.to)
    grid_attacks(config, [])  # the attacks peel tamper RUN/distill will run: a bad grid point fails now
    world = distributed.world_size()
    if world > 1 and config.train.parallel == "fsdp":
        raise PeelError("train.parallel=fsdp: peel distill replicates the student with DDP; accepted: train.parallel auto or ddp")
    per_step = settings.per_device_batch_size * world
    if settings.global_batch_size % per_step:
        raise PeelError(f"distill.global_batch_size={settings.global_batch_size} is not a multiple of per_device_batch_size "
                        f"({settings.per_device_batch_size}) x processes ({world}) = {per_step}")
    folder_state = resume.folder_state(output_dir, config, force)
    tokenizer = load_tokenizer(str(teacher))
    generated = settings.data == "generated"
    sources = [] if generated else [settings.data if settings.data is not None else config.data.retain]
    if settings.with_forget:
        sources.append(config.data.forget)
    examples = [ids for source in sources
                for ids in tokenize(load_texts(source, settings.num_examples, settings.seed), tokenizer, config.data.max_length)]
    prompts = None
    if generated:  # the retain texts' openings: read now, so a bad corpus fails before any weights load
        openings = tokenize(load_texts(config.data.retain, None, settings.seed), tokenizer, settings.generated.prompt_tokens)
        prompts = generation.prompts(openings, tokenizer, settings.generated.num_texts, settings.generated.prompt_tokens)
        if config.data.forget.keywords is not None:
            read_keywords(config.data.forget.keywords)
    return Prepared(teacher, folder_state, tokenizer, examples, settings.global_batch_size // per_step, prompts)


def generated_examples(config: Config, prepared: Prepared, output_dir: Path, device) -> tuple[list[list[int]], int]:
    """The texts the original model writes from `prepared.prompts`, tokenized, and how many were dropped
    for a forget keyword: sampled by the main process into output_dir/generated.json, or read from it
    when it holds these settings' texts; every process reads the file."""
    settings, path = config.distill, output_dir / GENERATED_FILE
    sampling = settings.generated
    key = {"model": to_dict(config.model), "retain": to_dict(config.data.retain), "keywords": config.data.forget.keywords,
           "seed": settings.seed, "prompts": len(prepared.prompts), **to_dict(sampling)}
    pattern = None if config.data.forget.keywords is None else keyword_pattern(read_keywords(config.data.forget.keywords))

    def make():
        original = lifecycle.load_original(config.model, config.train.dtype).to(device).eval()
        texts = generation.sample(original, prepared.tokenizer, prepared.prompts, sampling.temperature, sampling.max_new_tokens,
                                  sampling.batch_size, settings.seed)
        del original
        kept = generation.outside(texts, pattern)
        return kept, len(texts) - len(kept)

    if distributed.is_main():
        generation.cached(path, key, make)
    distributed.barrier()
    document = generation.cached(path, key, make)  # written by now: read, never sampled again
    return tokenize(document["texts"], prepared.tokenizer, config.data.max_length), document["dropped"]


def initial_student(teacher: Path, dtype: str, alpha: float, seed: int) -> nn.Module:
    """(1 - alpha) x the teacher's weights + alpha x a fresh initialisation (the model's own
    config and `_init_weights`, seeded), parameter by parameter; buffers stay the teacher's.
    `lerp` is exact at both ends: alpha 0 gives the teacher's values, alpha 1 the fresh ones."""
    from transformers import AutoModelForCausalLM

    student = load_model(str(teacher), dtype=dtype)
    if alpha == 0:
        return student
    torch.manual_seed(seed)
    fresh = dict(AutoModelForCausalLM.from_config(student.config, dtype=DTYPES[dtype]).named_parameters())
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            parameter.lerp_(fresh[name], alpha)
    return student


def distill(config: Config, force: bool = False, dry_run: bool = False) -> Path:
    """Distill RUN/model (config.distill.run) into a fresh-mixed student; return the run folder.

    Resuming, `force`, failures and preemption behave as in `engine.unlearn`."""
    started = time.time()
    device = distributed.init()
    settings, output_dir = config.distill, Path(config.output_dir).expanduser()

    # ---- setup: every check before anything is written
    prepared = prepare(config, force)
    if dry_run or prepared.folder_state == resume.COMPLETED:
        if distributed.is_main():
            completed = f"{output_dir} holds a completed distillation of this config; nothing to do (--force runs it again)"
            print(f"checked: {prepared.describe(settings.steps, settings.alpha)}" if dry_run else completed)
        return output_dir
    teacher_model = load_model(str(prepared.teacher), dtype=config.train.dtype).to(device).requires_grad_(False)
    teacher = Network(teacher_model, find_anatomy(teacher_model))
    student_model = initial_student(prepared.teacher, config.train.dtype, settings.alpha, settings.seed).to(device)
    student = Network(student_model, find_anatomy(student_model))
    saved = checkpoint.load(output_dir) if prepared.folder_state == resume.RESUME else None
    start = checkpoint.restore(saved, student, [])
    engine = "local" if distributed.world_size() == 1 else "ddp"
    forward = StudentForward(student)
    parallelism = parallel.ENGINES[engine](student, root=forward)  # DDP averages the student's gradients
    parameters = list(student.model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = make_scheduler(optimizer, settings)
    if saved is not None and saved["optimizer"] is not None:
        checkpoint.restore_optimizer(saved, optimizer, scheduler)

    tracker = lifecycle.open_run(output_dir, config, saved, prepared.folder_state == resume.RESUME, started, device, engine)

    examples_per_process = settings.global_batch_size // distributed.world_size()
    bar = tqdm(total=settings.steps, initial=start.step, desc="distill", disable=not distributed.is_main(), dynamic_ncols=True)
    with lifecycle.attended(output_dir, started, device, tracker, lambda: bar.n), contextlib.closing(bar):
        examples, generated = prepared.examples, {}
        if prepared.prompts is not None:
            texts, dropped = generated_examples(config, prepared, output_dir, device)
            examples, generated = texts + examples, {"generated_texts": len(texts), "generated_dropped": dropped}
        corpus = Corpus(examples, prepared.tokenizer.pad_token_id, device)
        epochs = max(1, math.ceil(settings.steps * settings.global_batch_size / len(corpus)))
        order = example_order(len(corpus), epochs, settings.seed, 0)
        # ---- train
        with preemption.stop_on_signals():
            for step in range(start.step, settings.steps):
                micro = process_share(order, step, settings.global_batch_size).split(settings.per_device_batch_size)
                batches = [corpus.batch(indices) for indices in micro]
                per_example = []
                for index, batch in enumerate(batches):
                    with parallelism.accumulate(sync=index == len(batches) - 1):
                        per_example.append(kl_backward(forward, student, teacher, batch, 1.0 / examples_per_process,
                                                       config.train.loss_chunk_tokens))
                max_norm = settings.max_grad_norm if settings.max_grad_norm > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
                # The stop flag rides with the loss's reduction, so every process stops after the same step.
                means = torch.stack([torch.cat(per_example).mean(), grad_norm.new_tensor(float(preemption.requested() is not None))]).float()
                distributed.all_reduce_mean([means])
                loss, stop = means.tolist()
                if not math.isfinite(loss):
                    raise RunFailed(f"non-finite distillation loss at step {step}; try a lower distill.lr or train.dtype=float32")
                record = {"step": step + 1, "distill_loss": loss, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0]}
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if distributed.is_main():
                    run_folder.append_jsonl(output_dir / METRICS_FILE, record)
                    tracker.log(record)
                bar.update(1)
                bar.set_postfix(kl=f"{loss:.4f}")
                position = checkpoint.Position(0, step + 1, step + 1)
                if stop > 0:
                    checkpoint.save(output_dir, student, position, optimizer, scheduler)
                    raise Preempted(f"stopped by {preemption.requested() or 'another process'} after step {step + 1}")
                if settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
                    checkpoint.save(output_dir, student, position, optimizer, scheduler)
        bar.close()

        # ---- finish
        parallelism.release()
        if distributed.is_main():
            save_model(student.model, prepared.tokenizer, output_dir / (MODEL_FOLDER + PARTIAL_SUFFIX))
            baseline = lifecycle.original_baseline(config.model, config.eval, lambda: original_evaluation(config, prepared.tokenizer, device))
            lifecycle.evaluate_result(student.model, prepared.tokenizer, config.eval, output_dir, baseline)
            lifecycle.complete(output_dir, (MODEL_FOLDER,), started, device, total_steps=settings.steps,
                               teacher=str(prepared.teacher), alpha=settings.alpha, parallel=engine, **generated)
        distributed.barrier()
    return output_dir


def make_scheduler(optimizer, settings):
    """The learning rate over distill.steps; `constant` keeps its warmup (transformers' constant_with_warmup)."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if settings.lr_scheduler == "constant" else settings.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=math.ceil(settings.warmup_ratio * settings.steps),
                         num_training_steps=max(settings.steps, 1))


def kl_backward(forward, student: Network, teacher: Network, batch, scale: float, chunk_tokens: int) -> torch.Tensor:
    """KL(teacher || student) of every real position's next-token distribution, the per-token mean
    of each example; backward on `scale` x their sum. Chunked as the engine's KL retain loss when the
    micro-batch has more than `chunk_tokens` tokens and both heads are known. -> [batch], detached"""
    heads = (student.anatomy.output_head, teacher.anatomy.output_head)
    width = None if None in heads else chunk_width(*batch.input_ids.shape, chunk_tokens)
    with torch.no_grad():
        if width is None:
            reference = Outputs(logits(teacher.model, batch.input_ids, None))
        else:
            reference = Outputs(final_hidden_states(teacher.anatomy, batch.input_ids, None), heads[1], width)
    values = forward(batch.input_ids, width is not None)
    current = Outputs(values) if width is None else Outputs(values, heads[0], width)
    per_example = token_means(lambda current_logits, reference_logits: losses.kl_tokens(reference_logits, current_logits),
                              [current, reference], [], batch.attention_mask)
    del current, reference
    (scale * per_example.sum()).backward()
    return per_example.detach()


def original_evaluation(config: Config, tokenizer, device) -> dict:
    """The model the run unlearned (config.model), loaded and evaluated: the baseline when no cache has it."""
    from peel.evaluation import evaluate_with

    return evaluate_with(lifecycle.load_original(config.model, config.train.dtype).to(device), tokenizer, config.eval)
