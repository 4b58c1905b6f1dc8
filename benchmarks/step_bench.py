"""Time and size peel's unlearning step against a two-copy reference and the algorithm's floor.

Three variants run the same optimizer step on the same model, data and settings:

- peel       the engine's own code: `weights.LoraWeights` / `FullWeights` set up as a run does,
             `engine.compute_gradients` (probe, retain passes, gradient filter) with one process's
             `parallel.Local`, then clipping and the AdamW update as `engine.run_phase` does;
- reference  the step as the research code computes it: a deep copy of the whole model is the
             original; the forget batch runs through every current layer (logits included), then
             through the copy's layers L+1.. and head; the retain reference comes from the copy;
             both losses go into one backward. It must give peel's loss values (checked);
- floor      only the passes the algorithm cannot avoid: forward+backward of the forget batch
             through the model and head, one no-grad and one forward+backward of the retain batch
             as deep as the retain loss needs, and the optimizer update.

Steps are timed interleaved in one process (variant order rotates every round), because the
machine is shared and noisy: read the ratios, not the absolute numbers. Peak memory is measured
in a separate process per variant (peak RSS on CPU, allocator peak on GPU).

    python benchmarks/step_bench.py --quick --output /tmp/quick.json
    python benchmarks/step_bench.py --output benchmarks/results/cpu-pythia160m-fp32.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from peel import parallel
from peel.config import LoraOptions, UnlearnConfig
from peel.engine import compute_gradients
from peel import losses
from peel.losses import l2_distance
from peel.models import find_anatomy, hidden_states, layer_output, logits
from peel.objectives import Batch
from peel.schedules import retain_layer_set
from peel.weights import FullWeights, LoraWeights

# GPT-NeoX shapes. pythia-160m is the headline (the shape of the research-cost note); pythia-1b is
# for the GPU run; small and tiny keep the quick preset and the test fast.
MODEL_SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128),
    "small": dict(vocab_size=8192, hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024),
    "pythia-160m": dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "pythia-1b": dict(vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
VARIANTS = ("peel", "reference", "floor")
# The forget losses the reference and the floor compute (on the probe's logits alone).
PROBE_LOSSES = {
    "random_ce": lambda logits, batch: losses.random_ce(logits, batch.attention_mask, batch.random_targets),
    "max_entropy_kl": lambda logits, batch: losses.max_entropy_kl(logits, batch.attention_mask),
}
MODES = ("lora", "full")

HEADLINE = dict(model="pythia-160m", batch_size=2, seq_len=256, warmup=1, steps=10, sweep_steps=3, sweep_points=4)
QUICK = dict(model="small", batch_size=2, seq_len=64, warmup=1, steps=3, sweep_steps=2, sweep_points=3)


@dataclass
class Settings:
    model: str
    batch_size: int  # examples per forget batch and per retain batch
    seq_len: int
    warmup: int
    steps: int
    sweep_steps: int
    sweep_points: int
    modes: list[str] = field(default_factory=lambda: list(MODES))
    target_layer: int | None = None  # default: the second phase of the schedule
    retain_layers: str = "all"  # all | target | comma-separated layer list
    forget_loss: str = "random_ce"
    sweep_layers: list[int] | None = None
    padding: int = 0  # pad tokens at the end of the last example of each batch (default seq_len // 8)
    threads: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    lr: float = 1e-4
    forget_coef: float = 1.0
    retain_coef: float = 1.0
    max_grad_norm: float = 1.0
    memory_steps: int = 2  # the second step is the first whose peak includes the optimizer state
    memory_jobs: int = 2
    seed: int = 0

    @property
    def num_layers(self) -> int:
        return MODEL_SHAPES[self.model]["num_hidden_layers"]

    @property
    def schedule(self) -> list[int]:
        """Full fine-tuning's target layers, back to front, about four of them."""
        return list(range(self.num_layers - 1, -1, -max(1, self.num_layers // 4)))

    @property
    def layer(self) -> int:
        return self.schedule[1] if self.target_layer is None else self.target_layer

    def retain_layer_list(self, layer: int) -> list[int]:
        spec = self.retain_layers
        chosen = spec if spec in ("all", "target") else [int(part) for part in spec.split(",")]
        return retain_layer_set(chosen, layer, self.num_layers)


# --------------------------------------------------------------------------------------------
# Model and data


def build_model(settings: Settings) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    config = GPTNeoXConfig(**MODEL_SHAPES[settings.model], max_position_embeddings=max(2048, settings.seq_len))
    torch.manual_seed(settings.seed)
    # Built directly on the device in the benchmark dtype, so no full-precision copy inflates a peak.
    with torch.device(settings.device):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[settings.dtype], attn_implementation="sdpa")
    return model.eval()  # as from_pretrained returns it (dropout is 0 in these configs anyway)


def make_batch(settings: Settings, seed: int, with_targets: bool) -> Batch:
    """Random token ids; the last example ends in padding so masks are exercised."""
    generator = torch.Generator().manual_seed(seed)
    vocab = MODEL_SHAPES[settings.model]["vocab_size"]
    shape = (settings.batch_size, settings.seq_len)
    input_ids = torch.randint(vocab, shape, generator=generator)
    attention_mask = torch.ones(shape, dtype=torch.long)
    padding = settings.padding or settings.seq_len // 8
    attention_mask[-1, settings.seq_len - padding :] = 0
    input_ids[attention_mask == 0] = 0
    targets = torch.randint(vocab, shape, generator=generator).to(settings.device) if with_targets else None
    return Batch(input_ids.to(settings.device), attention_mask.to(settings.device), targets)


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's weights and buffers."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


# --------------------------------------------------------------------------------------------
# Timing


class Clock:
    """Milliseconds per named part of a step (wall clock), and the step's process CPU time.

    On a shared machine the wall clock includes time other processes held the cores; with one
    thread, process CPU time does not, so it is recorded beside it as the steadier measure.
    """

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.parts: dict[str, float] = {}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        self.parts = {}
        self.cpu_start = time.process_time()
        self.last = self.now()

    def lap(self, part: str) -> None:
        now = self.now()
        self.parts[part] = self.parts.get(part, 0.0) + (now - self.last) * 1000
        self.last = now

    def cpu_ms(self) -> float:
        return (time.process_time() - self.cpu_start) * 1000


def update(parameters, optimizer, max_grad_norm: float) -> None:
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------------
# The three variants. Each is built from its own copy of the base model and returns a `step`
# function: one optimizer step on (forget, retain), returning [forget loss, retain loss].


def peel_weights(model, mode: str, settings: Settings):
    """peel's weights object, as the engine sets it up."""
    if mode == "lora":
        torch.manual_seed(settings.seed + 1)  # the same initial adapters in every variant
        return LoraWeights(model, LoraOptions())
    weights = FullWeights(model)
    for layer in settings.schedule:  # a run's last phase holds every target's originals: the most
        weights.begin_phase(layer)
    weights.begin_phase(settings.layer)
    return weights


def plain_trainable(model, mode: str, settings: Settings, layer: int):
    """The reference's and the floor's trainable setup: peel's adapters (so the same initial
    adapters), or the target layer alone; no originals kept."""
    if mode == "lora":
        network = peel_weights(model, mode, settings).model
    else:
        network = model.requires_grad_(False)
        find_anatomy(network).layers[layer].requires_grad_(True)
    return network, [parameter for parameter in network.parameters() if parameter.requires_grad]


class TimedLocal(parallel.Local):
    """One process, exactly `parallel.Local`; also marks on the clock where each objective's
    passes end (the engine enters `accumulate` once per micro-batch: forget first, then retain)."""

    def __init__(self, weights, clock: Clock):
        super().__init__(weights)
        self.clock = clock
        self.calls = 0

    @contextlib.contextmanager
    def accumulate(self, sync: bool):
        yield
        self.clock.lap(("forget", "retain")[self.calls % 2])
        self.calls += 1


def peel_variant(weights, settings: Settings, layer: int, clock: Clock, unlearn: UnlearnConfig | None = None):
    """The engine's own step: `engine.compute_gradients`, then the update as `engine.run_phase` does it."""
    parameters = weights.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr)
    parallelism = TimedLocal(weights, clock)
    unlearn = unlearn or UnlearnConfig(forget_loss=settings.forget_loss, retain_loss="l2", grad_filter="none", l2sp_coef=0.0)
    retain_layers = settings.retain_layer_list(layer)

    def step(forget: Batch, retain: Batch):
        statistics = compute_gradients(
            weights, parallelism, parameters, layer, [forget], [retain], unlearn, retain_layers,
            settings.forget_coef, settings.retain_coef, settings.batch_size,
        )
        update(parameters, optimizer, settings.max_grad_norm)
        clock.lap("update")
        return [statistics["forget_loss"], statistics["retain_loss"]]

    return step


def reference_variant(model, mode, settings: Settings, layer: int, clock: Clock):
    original = copy.deepcopy(model).requires_grad_(False)
    current, parameters = plain_trainable(model, mode, settings, layer)
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr)
    current_anatomy, original_anatomy = find_anatomy(current), find_anatomy(original)
    retain_layers = settings.retain_layer_list(layer)

    def full_forward(network, anatomy, batch: Batch, capture: list[int]):
        """The whole model, logits included; returns the captured layer outputs (and the arguments
        the decoder handed to the layer after the last captured one) and the model's output."""
        captured, handles = {}, []
        for index in capture:
            hook = lambda module, args, output, index=index: captured.__setitem__(index, layer_output(output))
            handles.append(anatomy.layers[index].register_forward_hook(hook))
        following = max(capture) + 1
        if following < anatomy.num_layers:
            hook = lambda module, args, kwargs: captured.__setitem__("call", (args[1:], kwargs))
            handles.append(anatomy.layers[following].register_forward_pre_hook(hook, with_kwargs=True))
        output = network(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        for handle in handles:
            handle.remove()
        return captured, output

    def step(forget: Batch, retain: Batch):
        # Probe: the current model through all layers, then the copy from layer L+1 on, called
        # with the very arguments (mask, positions) the current decoder gave its layer L+1: exact
        # under any attention implementation and padding, as peel's probe is.
        captured, forget_output = full_forward(current, current_anatomy, forget, [layer])
        hidden = captured[layer]
        if layer + 1 < original_anatomy.num_layers:
            extra_args, kwargs = captured["call"]
            for original_layer in original_anatomy.layers[layer + 1 :]:
                hidden = layer_output(original_layer(hidden, *extra_args, **kwargs))
            probe = original_anatomy.unembedding(original_anatomy.final_norm(hidden))
        else:
            probe = forget_output.logits
        forget_losses = PROBE_LOSSES[settings.forget_loss](probe, forget)
        clock.lap("forget")
        with torch.no_grad():
            reference, _ = full_forward(original, original_anatomy, retain, retain_layers)
        current_states, retain_output = full_forward(current, current_anatomy, retain, retain_layers)
        current_states = {index: current_states[index] for index in retain_layers}
        reference = {index: reference[index] for index in retain_layers}
        retain_losses = l2_distance(current_states, reference, retain.attention_mask)
        # One backward of the summed loss, as the research code does: both graphs alive at once.
        total = (settings.forget_coef * forget_losses.sum() + settings.retain_coef * retain_losses.sum()) / settings.batch_size
        total.backward()
        clock.lap("retain")
        update(parameters, optimizer, settings.max_grad_norm)
        losses = torch.stack([forget_losses.mean(), retain_losses.mean()]).float().tolist()
        clock.lap("update")
        return losses

    return step


def floor_variant(model, mode, settings: Settings, layer: int, clock: Clock):
    network, parameters = plain_trainable(model, mode, settings, layer)
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr)
    anatomy = find_anatomy(network)
    retain_layers = settings.retain_layer_list(layer)
    scale = 1.0 / settings.batch_size

    def step(forget: Batch, retain: Batch):
        probe = logits(network, forget.input_ids, forget.attention_mask)
        forget_losses = PROBE_LOSSES[settings.forget_loss](probe, forget)
        del probe
        (scale * forget_losses.sum()).backward()
        clock.lap("forget")
        with torch.no_grad():
            reference = hidden_states(anatomy, retain.input_ids, retain.attention_mask, retain_layers)
        current = hidden_states(anatomy, retain.input_ids, retain.attention_mask, retain_layers)
        retain_losses = l2_distance(current, reference, retain.attention_mask)
        (scale * retain_losses.sum()).backward()
        clock.lap("retain")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses = torch.stack([forget_losses.mean(), retain_losses.mean()]).float().tolist()
        clock.lap("update")
        return losses

    return step


def build_variant(name: str, model, mode: str, settings: Settings, clock: Clock):
    if name == "peel":
        return peel_variant(peel_weights(model, mode, settings), settings, settings.layer, clock)
    if name == "reference":
        return reference_variant(model, mode, settings, settings.layer, clock)
    return floor_variant(model, mode, settings, settings.layer, clock)


# --------------------------------------------------------------------------------------------
# Measurements


def time_mode(base_model, mode: str, settings: Settings) -> dict:
    """Median step time of each variant, interleaved; and the losses of the first two steps."""
    clock = Clock(settings.device)
    steps = {name: build_variant(name, copy.deepcopy(base_model), mode, settings, clock) for name in VARIANTS}
    forget, retain = make_batch(settings, 1, with_targets=True), make_batch(settings, 2, with_targets=False)
    step_ms = {name: [] for name in VARIANTS}
    cpu_ms = {name: [] for name in VARIANTS}
    parts_ms = {name: [] for name in VARIANTS}
    first_losses = {name: [] for name in VARIANTS}
    for round_index in range(settings.warmup + settings.steps):
        shift = round_index % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            clock.start()
            losses = steps[name](forget, retain)
            if len(first_losses[name]) < 2:
                first_losses[name].append(losses)
            if round_index >= settings.warmup:
                step_ms[name].append(sum(clock.parts.values()))
                cpu_ms[name].append(clock.cpu_ms())
                parts_ms[name].append(dict(clock.parts))
        print(f"  {mode} round {round_index + 1}/{settings.warmup + settings.steps}: "
              + ", ".join(f"{name} {step_ms[name][-1]:.0f} ms" for name in VARIANTS if step_ms[name]), flush=True)
    # Arithmetic does not depend on the machine's load: one more step of each, counted.
    gflops = {}
    for name in VARIANTS:
        with FlopCounterMode(display=False) as counter:
            clock.start()
            steps[name](forget, retain)
        gflops[name] = counter.get_total_flops() / 1e9
    del steps
    median = {name: statistics.median(values) for name, values in step_ms.items()}
    cpu = {name: statistics.median(values) for name, values in cpu_ms.items()}
    parts = {name: {part: round(statistics.median(p[part] for p in rows), 1) for part in rows[0]} for name, rows in parts_ms.items()}

    # Each round runs the variants back to back, so a ratio within a round shares the machine's
    # load of that moment: the median of those ratios is the steadiest comparison here.
    def paired(values: dict[str, list[float]], other: str) -> float:
        return round(statistics.median(a / b for a, b in zip(values["peel"], values[other])), 3)

    tolerance = 1e-4 if settings.dtype == "float32" else 2e-2
    agree = all(
        abs(peel_value - reference_value) <= tolerance * max(1.0, abs(reference_value))
        for peel_step, reference_step in zip(first_losses["peel"], first_losses["reference"])
        for peel_value, reference_value in zip(peel_step, reference_step)
    )
    tokens = 2 * settings.batch_size * settings.seq_len
    return {
        "peel_ms": round(median["peel"], 1),
        "reference_ms": round(median["reference"], 1),
        "floor_ms": round(median["floor"], 1),
        "time_vs_reference": round(median["peel"] / median["reference"], 3),
        "time_vs_floor": round(median["peel"] / median["floor"], 3),
        "peel_cpu_ms": round(cpu["peel"], 1),
        "reference_cpu_ms": round(cpu["reference"], 1),
        "floor_cpu_ms": round(cpu["floor"], 1),
        "cpu_time_vs_reference": round(cpu["peel"] / cpu["reference"], 3),
        "cpu_time_vs_floor": round(cpu["peel"] / cpu["floor"], 3),
        "paired_ratios": {
            "time_vs_reference": paired(step_ms, "reference"),
            "time_vs_floor": paired(step_ms, "floor"),
            "cpu_time_vs_reference": paired(cpu_ms, "reference"),
            "cpu_time_vs_floor": paired(cpu_ms, "floor"),
        },
        "gflops": {name: round(value, 1) for name, value in gflops.items()},
        "flops_vs_reference": round(gflops["peel"] / gflops["reference"], 3),
        "flops_vs_floor": round(gflops["peel"] / gflops["floor"], 3),
        "tokens_per_s": {name: round(tokens / (median[name] / 1000), 1) for name in VARIANTS},
        "parts_ms": parts,
        "step_ms": {name: [round(value, 1) for value in values] for name, values in step_ms.items()},
        "cpu_ms": {name: [round(value, 1) for value in values] for name, values in cpu_ms.items()},
        # [forget, retain] loss of steps 1 and 2 (the retain loss is 0 at step 1: model = original)
        "first_step_losses": {name: first_losses[name] for name in ("peel", "reference")},
        "loss_tolerance": tolerance,
        "losses_agree": agree,
    }


def sweep_target_layer(base_model, settings: Settings) -> dict:
    """peel's LoRA step with a target-layer-only L2 retain loss, for several target layers."""
    sweep = dataclasses.replace(settings, retain_layers="target")
    clock = Clock(settings.device)
    weights = peel_weights(copy.deepcopy(base_model), "lora", settings)
    layers = sweep.sweep_layers or evenly_spaced(settings.num_layers, settings.sweep_points)
    steps = {layer: peel_variant(weights, sweep, layer, clock) for layer in layers}
    forget, retain = make_batch(settings, 1, with_targets=True), make_batch(settings, 2, with_targets=False)
    rows = {layer: [] for layer in layers}
    for round_index in range(1 + settings.sweep_steps):
        shift = round_index % len(layers)
        for layer in layers[shift:] + layers[:shift]:
            clock.start()
            steps[layer](forget, retain)
            if round_index >= 1:
                rows[layer].append(dict(clock.parts, step=sum(clock.parts.values())))
        print(f"  sweep round {round_index + 1}/{1 + settings.sweep_steps}", flush=True)
    table = []
    for layer in layers:
        median = {part: statistics.median(row[part] for row in rows[layer]) for part in rows[layer][0]}
        table.append({"layer": layer, "step_ms": round(median["step"], 1), "forget_ms": round(median["forget"], 1),
                      "retain_ms": round(median["retain"], 1), "update_ms": round(median["update"], 1)})
    return {"mode": "lora", "retain_layers": "target", "rows": table}


def evenly_spaced(num_layers: int, points: int) -> list[int]:
    points = min(points, num_layers)
    return sorted({round(index * (num_layers - 1) / max(1, points - 1)) for index in range(points)})


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across
    fork and exec, so a worker started by a large parent would report the parent's size."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def memory_worker(mode: str, name: str, settings: Settings) -> dict:
    """Runs in its own process: build one variant, take a few steps, report the peak."""
    cuda = settings.device.startswith("cuda")
    result = {"after_imports_mb": round(current_rss_mb(), 1)}
    model = build_model(settings)
    before_originals = torch.cuda.memory_allocated() / 2**20 if cuda else current_rss_mb()
    clock = Clock(settings.device)
    step = build_variant(name, model, mode, settings, clock)
    if name == "peel" and mode == "full":
        # What peel's originals really occupy (all the schedule's targets were snapshotted in setup).
        after = torch.cuda.memory_allocated() / 2**20 if cuda else current_rss_mb()
        result["originals_growth_mb"] = round(after - before_originals, 1)
    forget, retain = make_batch(settings, 1, with_targets=True), make_batch(settings, 2, with_targets=False)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # the peak from here on includes everything now held
    for _ in range(settings.memory_steps):
        clock.start()
        step(forget, retain)
    if cuda:
        result["peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        result["peak_mb"] = round(peak_rss_mb(), 1)
    return result


def measure_memory(mode: str, settings: Settings) -> dict[str, dict]:
    """One fresh process per variant, so each peak is that variant's alone."""

    def run(name: str) -> tuple[str, dict]:
        command = [sys.executable, __file__, "--worker", mode, name, json.dumps(asdict(settings))]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode:
            raise RuntimeError(f"memory worker {mode}/{name} failed:\n{completed.stderr[-3000:]}")
        return name, json.loads(completed.stdout.strip().splitlines()[-1])

    # On a GPU one worker at a time: none then competes with another for the card's memory.
    jobs = 1 if settings.device.startswith("cuda") else settings.memory_jobs
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(run, VARIANTS))


def original_weights_memory(base_model, settings: Settings) -> dict:
    """Full fine-tuning: bytes held for originals against (targets / layers) x model bytes."""
    weights = peel_weights(copy.deepcopy(base_model), "full", settings)
    held = sum(tensor.numel() * tensor.element_size() for values in weights.originals.values() for tensor in values)
    model_bytes = tensor_bytes(base_model)
    targets, layers = len(settings.schedule), settings.num_layers
    bound = targets / layers * model_bytes * 1.05
    return {
        "targets": settings.schedule,
        "num_layers": layers,
        "held_mb": round(held / 2**20, 1),
        "model_mb": round(model_bytes / 2**20, 1),
        "bound_mb": round(bound / 2**20, 1),
        "held_vs_bound": round(held / bound, 3),
        "met": held <= bound,
    }


def environment(settings: Settings) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine = {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    if settings.device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name()
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft"):
        versions[package] = metadata.version(package)
    return {"date": datetime.date.today().isoformat(), "machine": machine, "versions": versions}


def targets_met(result: dict) -> dict:
    """The issue's targets (headline, LoRA; full fine-tuning's originals)."""
    met = {}
    lora = result["modes"].get("lora")
    if lora:
        met["lora_memory_vs_reference<=0.65"] = lora["memory_vs_reference"] <= 0.65
        met["lora_time_vs_reference<=0.85"] = lora["time_vs_reference"] <= 0.85
        met["lora_time_vs_floor<=1.15"] = lora["time_vs_floor"] <= 1.15
    if "full_original_weights" in result:
        met["full_originals<=bound"] = result["full_original_weights"]["met"]
    return met


def markdown(result: dict) -> str:
    """The README's tables for one result."""
    lines = ["| mode | peel ms | reference ms | floor ms | peel/ref | peel/floor | FLOPs peel/ref | peel MB | reference MB | floor MB | peel/ref MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, row in result["modes"].items():
        lines.append(
            f"| {mode} | {row['peel_ms']:.0f} | {row['reference_ms']:.0f} | {row['floor_ms']:.0f} | {row['time_vs_reference']:.2f} "
            f"| {row['time_vs_floor']:.2f} | {row['flops_vs_reference']:.2f} | {row['peel_peak_mb']:.0f} | {row['reference_peak_mb']:.0f} "
            f"| {row['floor_peak_mb']:.0f} | {row['memory_vs_reference']:.2f} |"
        )
    if "target_layer_sweep" in result:
        lines += ["", "| target layer | step ms | forget ms | retain ms |", "|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['step_ms']:.0f} | {r['forget_ms']:.0f} | {r['retain_ms']:.0f} |" for r in result["target_layer_sweep"]["rows"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def parse_settings(argv=None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, few steps: under a minute")
    parser.add_argument("--model", choices=sorted(MODEL_SHAPES), help="GPT-NeoX shape, random weights")
    parser.add_argument("--modes", help="comma-separated: lora,full")
    parser.add_argument("--batch-size", type=int, help="examples per forget batch and per retain batch")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--target-layer", type=int, help="default: the second target of the schedule")
    parser.add_argument("--retain-layers", default="all", help="L2 retain layers: all, target, or a list like 3,7,11")
    parser.add_argument("--forget-loss", default="random_ce", choices=sorted(PROBE_LOSSES))
    parser.add_argument("--warmup", type=int, help="untimed steps per variant")
    parser.add_argument("--steps", type=int, help="timed steps per variant")
    parser.add_argument("--sweep-layers", help="target layers of the target-only retain sweep, e.g. 0,4,8,11; 'none' skips it")
    parser.add_argument("--sweep-steps", type=int)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--memory-jobs", type=int, default=2, help="memory processes at once (CPU)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory processes")
    parser.add_argument("--output", type=Path, help="write the results JSON here")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "VARIANT", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return Settings(**json.loads(args.worker[2])), args

    preset = dict(QUICK if args.quick else HEADLINE)
    for key in ("model", "batch_size", "seq_len", "warmup", "steps", "sweep_steps"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    settings = Settings(
        **preset,
        modes=args.modes.split(",") if args.modes else list(MODES),
        target_layer=args.target_layer,
        retain_layers=args.retain_layers,
        forget_loss=args.forget_loss,
        threads=args.threads,
        device=args.device,
        dtype=args.dtype,
        memory_jobs=args.memory_jobs,
    )
    if args.sweep_layers == "none":
        settings.sweep_points = 0
    elif args.sweep_layers:
        settings.sweep_layers = [int(part) for part in args.sweep_layers.split(",")]
    unknown = set(settings.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}; accepted: {', '.join(MODES)}")
    return settings, args


def main(argv=None) -> dict | None:
    settings, args = parse_settings(argv)
    torch.set_num_threads(settings.threads)
    if args.worker:
        mode, name, _ = args.worker
        print(json.dumps(memory_worker(mode, name, settings)))
        return None

    started = time.time()
    result = {**environment(settings), "settings": asdict(settings) | {"target_layer": settings.layer}, "modes": {}}
    print(f"model {settings.model}, {settings.dtype} on {settings.device}, {settings.threads} threads, "
          f"target layer {settings.layer}, retain layers {settings.retain_layers}", flush=True)
    base_model = build_model(settings)
    result["num_parameters"] = sum(parameter.numel() for parameter in base_model.parameters())
    for mode in settings.modes:
        row = time_mode(base_model, mode, settings)
        if not args.no_memory:
            memory = measure_memory(mode, settings)
            row |= {f"{name}_peak_mb": memory[name]["peak_mb"] for name in VARIANTS}
            row["memory_vs_reference"] = round(memory["peel"]["peak_mb"] / memory["reference"]["peak_mb"], 3)
            row["memory_detail"] = memory
        result["modes"][mode] = row
    if "full" in settings.modes:
        result["full_original_weights"] = original_weights_memory(base_model, settings)
        growth = result["modes"]["full"].get("memory_detail", {}).get("peel", {}).get("originals_growth_mb")
        result["full_original_weights"]["measured_growth_mb"] = growth
    if settings.sweep_points or settings.sweep_layers:
        result["target_layer_sweep"] = sweep_target_layer(base_model, settings)
    result["targets_met"] = targets_met(result) if not args.no_memory else {}
    result["machine"]["load_average_end"] = os.getloadavg()
    result["wall_s"] = round(time.time() - started, 1)

    if not args.no_memory:
        print(markdown(result))
    print(json.dumps({"targets_met": result["targets_met"], "wall_s": result["wall_s"]}))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
