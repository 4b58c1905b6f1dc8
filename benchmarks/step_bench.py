"""Time and size peel's unlearning step against a two-copy reference and the algorithm's floor.

Three variants run the same optimizer step on the same model, data and settings (the variants
are described in stepbench/variants.py): peel (the engine's own code), reference (the research
code's two-copy step) and floor (only the passes the algorithm cannot avoid). Steps are timed
interleaved in one process, because the machine is shared and noisy: read the ratios, not the
absolute numbers. Peak memory is measured first, one fresh process per variant at a time. Each
variant's FLOPs are counted, and its achieved FLOP/s reported (with the share of the device's
dense peak on a known GPU).

    python benchmarks/step_bench.py --quick --output /tmp/quick.json
    python benchmarks/step_bench.py --output benchmarks/results/cpu-pythia160m-fp32.json
    python benchmarks/step_bench.py --preset long --threads 2 --output benchmarks/results/cpu-pythia160m-fp32-long.json
    python benchmarks/step_bench.py --preset gpu-batch16 --output benchmarks/results/gpu-pythia1b-bf16-batch16.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stepbench package beside this file
from stepbench import hardware, memory  # noqa: E402
from stepbench.report import markdown, targets_met, write  # noqa: E402
from stepbench.sweep import original_weights_memory, sweep_target_layer  # noqa: E402
from stepbench.timing import Clock, count_gflops, interleave  # noqa: E402
from stepbench.variants import PROBE_LOSSES, VARIANTS, build_variant  # noqa: E402
from stepbench.workload import DTYPES, MODEL_SHAPES, MODES, Settings, batches, build_model  # noqa: E402

# name -> the settings it fixes (the command line may override each).
PRESETS = {
    "headline": dict(model="pythia-160m", batch_size=2, seq_len=256, warmup=1, steps=10, sweep_steps=3, sweep_points=4),
    "quick": dict(model="small", batch_size=2, seq_len=64, warmup=1, steps=3, sweep_steps=2, sweep_points=3),
    # Issue 13's long sequences: 2 x 2048 forget and retain tokens, max_entropy_kl, L2 on all layers, LoRA.
    # Peel as a long-sequence run would set it: selective activation checkpointing (its peak without
    # that is measured as well).
    "long": dict(model="pythia-160m", batch_size=2, seq_len=2048, warmup=1, steps=4, sweep_steps=0, sweep_points=0,
                 modes=["lora"], forget_loss="max_entropy_kl", retain_layers="all", gradient_checkpointing="selective"),
    # Issue 13's GPU shapes: Pythia-1B, bf16, 16 x 512 and the seed's per-device 4 x 512 tokens.
    "gpu-batch16": dict(model="pythia-1b", batch_size=16, seq_len=512, warmup=2, steps=10, sweep_steps=3, sweep_points=4,
                        device="cuda", dtype="bfloat16", threads=4),
    "gpu-batch4": dict(model="pythia-1b", batch_size=4, seq_len=512, warmup=2, steps=20, sweep_steps=0, sweep_points=0,
                       device="cuda", dtype="bfloat16", threads=4),
}


# --gradient-checkpointing -> peel's train.gradient_checkpointing value.
CHECKPOINTING = {"false": False, "true": True, "selective": "selective"}


def time_mode(base_model, mode: str, settings: Settings) -> dict:
    """Median step time of each variant, interleaved; FLOPs and achieved rates; the first losses."""
    clock = Clock(settings.device)
    forget, retain = batches(settings)
    built = {name: build_variant(name, copy.deepcopy(base_model), mode, settings, clock) for name in VARIANTS}
    timings = interleave({name: lambda step=step: step(forget, retain) for name, step in built.items()},
                         clock, settings.warmup, settings.steps, mode)
    gflops = {name: count_gflops(lambda step=step: step(forget, retain), clock) for name, step in built.items()}
    del built
    median = {name: timings.median(name) for name in VARIANTS}
    cpu = {name: statistics.median(values) for name, values in timings.cpu_ms.items()}
    first_losses = {name: timings.outputs[name][:2] for name in ("peel", "reference")}  # [forget, retain] of steps 1 and 2
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
            "time_vs_reference": timings.paired("peel", "reference"),
            "time_vs_floor": timings.paired("peel", "floor"),
            "cpu_time_vs_reference": timings.paired("peel", "reference", cpu=True),
            "cpu_time_vs_floor": timings.paired("peel", "floor", cpu=True),
        },
        "gflops": {name: hardware.significant(value) for name, value in gflops.items()},
        "flops_vs_reference": round(gflops["peel"] / gflops["reference"], 3),
        "flops_vs_floor": round(gflops["peel"] / gflops["floor"], 3),
        "rates": hardware.achieved(gflops, median, hardware.dense_peak_tflops(settings.device, settings.dtype)),
        "tokens_per_s": {name: round(tokens / (median[name] / 1000), 1) for name in VARIANTS},
        "parts_ms": {name: timings.median_parts(name) for name in VARIANTS},
        "step_ms": {name: [round(value, 1) for value in values] for name, values in timings.step_ms.items()},
        "cpu_ms": {name: [round(value, 1) for value in values] for name, values in timings.cpu_ms.items()},
        # [forget, retain] loss of steps 1 and 2 (the retain loss is 0 at step 1: model = original)
        "first_step_losses": first_losses,
        "loss_tolerance": tolerance,
        "losses_agree": agree,
    }


def measure_memory(mode: str, settings: Settings) -> dict[str, dict]:
    """Each variant's peak; with activation checkpointing asked of peel, also peel's peak without it."""
    measured = memory.measure(__file__, mode, VARIANTS, settings)
    if settings.gradient_checkpointing is not False:
        plain = dataclasses.replace(settings, gradient_checkpointing=False)
        measured["peel_without_checkpointing"] = memory.measure(__file__, mode, ["peel"], plain)["peel"]
    return measured


def memory_row(measured: dict[str, dict]) -> dict:
    row = {f"{name}_peak_mb": values["peak_mb"] for name, values in measured.items()}
    for name in filter(lambda name: name.startswith("peel"), measured):  # peel, and peel_without_checkpointing
        row[f"memory{name.removeprefix('peel')}_vs_reference"] = round(measured[name]["peak_mb"] / measured["reference"]["peak_mb"], 3)
    row["memory_detail"] = measured
    return row


def parse_settings(argv=None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="headline", help="what is measured (default: headline)")
    parser.add_argument("--quick", action="store_true", help="the quick preset: small model, few steps, under a minute")
    parser.add_argument("--model", choices=sorted(MODEL_SHAPES), help="GPT-NeoX shape, random weights")
    parser.add_argument("--modes", help="comma-separated: lora,full")
    parser.add_argument("--batch-size", type=int, help="examples per forget batch and per retain batch")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--target-layer", type=int, help="default: the second target of the schedule")
    parser.add_argument("--retain-layers", help="L2 retain layers: all, target, or a list like 3,7,11")
    parser.add_argument("--forget-loss", choices=sorted(PROBE_LOSSES))
    parser.add_argument("--warmup", type=int, help="untimed steps per variant")
    parser.add_argument("--steps", type=int, help="timed steps per variant")
    parser.add_argument("--sweep-layers", help="target layers of the target-only retain sweep, e.g. 0,4,8,11; 'none' skips it")
    parser.add_argument("--sweep-steps", type=int)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in every process (default 1; GPU presets 4)")
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=sorted(DTYPES))
    parser.add_argument("--loss-chunk-tokens", type=int, help="peel's train.loss_chunk_tokens (default 1024)")
    parser.add_argument("--compile", action="store_true", help="peel with train.compile")
    parser.add_argument("--gradient-checkpointing", choices=sorted(CHECKPOINTING),
                        help="peel's train.gradient_checkpointing (default false; the long preset selective)")
    parser.add_argument("--memory-jobs", type=int, help="memory processes at once on CPU (default 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory processes")
    parser.add_argument("--output", type=Path, help="write the results JSON here")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "VARIANT", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return Settings(**json.loads(args.worker[2])), args

    if args.quick:
        args.preset = "quick"
    chosen = dict(PRESETS[args.preset])
    options = {"modes": args.modes.split(",") if args.modes else None, "sweep_points": 0 if args.sweep_layers == "none" else None,
               "sweep_layers": [int(part) for part in args.sweep_layers.split(",")] if args.sweep_layers not in (None, "none") else None}
    for key in ("model", "batch_size", "seq_len", "warmup", "steps", "sweep_steps", "target_layer", "retain_layers",
                "forget_loss", "threads", "device", "dtype", "loss_chunk_tokens", "memory_jobs"):
        options[key] = getattr(args, key)
    options["compile"] = args.compile or None
    options["gradient_checkpointing"] = CHECKPOINTING.get(args.gradient_checkpointing)
    settings = Settings(**(chosen | {key: value for key, value in options.items() if value is not None}))
    unknown = set(settings.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}; accepted: {', '.join(MODES)}")
    return settings, args


def main(argv=None) -> dict | None:
    settings, args = parse_settings(argv)
    torch.set_num_threads(settings.threads)
    if args.worker:
        mode, name, _ = args.worker
        build = lambda model, clock: build_variant(name, model, mode, settings, clock)
        print(json.dumps(memory.worker(build, lambda: batches(settings), settings)))
        return None

    started = time.time()
    result = {**hardware.environment(settings), "preset": args.preset,
              "settings": asdict(settings) | {"target_layer": settings.layer}, "modes": {}}
    print(f"{args.preset}: model {settings.model}, {settings.dtype} on {settings.device}, {settings.threads} threads, "
          f"{settings.batch_size} x {settings.seq_len} tokens, target layer {settings.layer}, retain layers {settings.retain_layers}",
          flush=True)
    # Memory first, one worker at a time, while this process holds no model of its own.
    measured = {} if args.no_memory else {mode: measure_memory(mode, settings) for mode in settings.modes}
    base_model = build_model(settings)
    result["num_parameters"] = sum(parameter.numel() for parameter in base_model.parameters())
    for mode in settings.modes:
        row = time_mode(base_model, mode, settings)
        if mode in measured:
            row |= memory_row(measured[mode])
        result["modes"][mode] = row
    if "full" in settings.modes:
        result["full_original_weights"] = original_weights_memory(base_model, settings)
        growth = measured.get("full", {}).get("peel", {}).get("setup_growth_mb")
        result["full_original_weights"]["measured_growth_mb"] = growth
    if settings.sweep_points or settings.sweep_layers:
        result["target_layer_sweep"] = sweep_target_layer(base_model, settings)
    result["targets_met"] = targets_met(result, args.preset) if not args.no_memory else {}
    result["machine"]["load_average_end"] = os.getloadavg()
    result["wall_s"] = round(time.time() - started, 1)

    print(markdown(result))
    print(json.dumps({"targets_met": result["targets_met"], "wall_s": result["wall_s"]}))
    write(result, args.output)
    return result


if __name__ == "__main__":
    main()
