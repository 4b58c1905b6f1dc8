"""Which LoRA path makes peel's step fastest: peft's adapters, compiled layers, or merged weights.

The same peel LoRA step (the engine's `compute_gradients` and update, as `step_bench.py`'s peel
variant) with the adapters computed three ways:

- peft             peft's unmerged adapters, eager: W x + s B (A x) per adapted layer;
- compiled         the same with `train.compile` (each decoder layer through torch.compile, whose
                   generated kernels fuse the adapters' elementwise work);
- merged_gradient  (W + s B A) x, the adapters' gradients from the merged weight's gradient
                   (stepbench/merged_lora.py): fewer, larger products, one of them as large as a
                   full fine-tuning weight gradient.

All three must compute the same losses (checked on the first two steps). Times are interleaved in
one process; FLOPs counted (the compiled variant's generated kernels are not seen by the counter,
so its FLOPs are taken as peft's: the same arithmetic); peak memory from one fresh process per
variant, one at a time.

    python benchmarks/lora_paths_bench.py --quick --output /tmp/lora_paths.json
    python benchmarks/lora_paths_bench.py --output benchmarks/results/cpu-lora-paths-pythia160m-fp32.json
    python benchmarks/lora_paths_bench.py --preset gpu-batch4 --output benchmarks/results/gpu-lora-paths-pythia1b-bf16-batch4.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stepbench package beside this file
from stepbench import hardware, memory  # noqa: E402
from stepbench.merged_lora import use_merged_adapters  # noqa: E402
from stepbench.report import write  # noqa: E402
from stepbench.timing import Clock, count_gflops, interleave  # noqa: E402
from stepbench.variants import peel_variant, peel_weights  # noqa: E402
from stepbench.workload import Settings, batches, build_model  # noqa: E402
from step_bench import PRESETS  # noqa: E402

PATHS = ("peft", "compiled", "merged_gradient")


def path_step(model, name: str, settings: Settings, clock: Clock):
    weights = peel_weights(model, "lora", dataclasses.replace(settings, compile=name == "compiled"))
    if name == "merged_gradient":
        use_merged_adapters(weights.model)
    return peel_variant(weights, settings, settings.layer, clock)


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="headline", help="the step benchmark's shape (default: headline)")
    parser.add_argument("--quick", action="store_true", help="the quick preset")
    parser.add_argument("--model", help="GPT-NeoX shape of step_bench.py (default: the preset's)")
    parser.add_argument("--steps", type=int, help="timed steps per path")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in every process")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-path memory processes")
    parser.add_argument("--output", type=Path, help="write the results JSON here")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "VARIANT", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        memory.serve(args.worker, lambda model, mode, name, settings, clock: path_step(model, name, settings, clock),
                     lambda settings, name: batches(settings))
        return None

    chosen = dict(PRESETS["quick" if args.quick else args.preset]) | {"modes": ["lora"], "sweep_points": 0}
    chosen |= {key: getattr(args, key) for key in ("model", "steps", "threads") if getattr(args, key) is not None}
    settings = Settings(**chosen)
    torch.set_num_threads(settings.threads)
    started = time.time()
    result = {**hardware.environment(settings), "preset": "quick" if args.quick else args.preset, "settings": asdict(settings)}
    peaks = {} if args.no_memory else memory.measure(__file__, "lora", PATHS, settings)
    base_model = build_model(settings)
    clock = Clock(settings.device)
    forget, retain = batches(settings)
    built = {name: path_step(copy.deepcopy(base_model), name, settings, clock) for name in PATHS}
    # One more warm-up round than asked: the compiled path compiles in its first steps.
    timings = interleave({name: lambda step=step: step(forget, retain) for name, step in built.items()},
                         clock, settings.warmup + 1, settings.steps, "lora paths")
    gflops = {name: count_gflops(lambda step=step: step(forget, retain), clock) for name, step in built.items()}
    gflops["compiled"] = gflops["peft"]  # its generated kernels are invisible to the counter
    median = {name: timings.median(name) for name in PATHS}
    first = {name: timings.outputs[name][:2] for name in PATHS}
    tolerance = 1e-4 if settings.dtype == "float32" else 2e-2
    result |= {
        "step_ms": {name: round(value, 1) for name, value in median.items()},
        "time_vs_peft": {name: timings.paired(name, "peft") for name in PATHS},
        "gflops": {name: hardware.significant(value) for name, value in gflops.items()},
        "rates": hardware.achieved(gflops, median, hardware.dense_peak_tflops(settings.device, settings.dtype)),
        "parts_ms": {name: timings.median_parts(name) for name in PATHS},
        "raw_step_ms": {name: [round(value, 1) for value in values] for name, values in timings.step_ms.items()},
        "first_step_losses": first,
        "losses_agree": all(abs(a - b) <= tolerance * max(1.0, abs(b))
                            for name in PATHS for step, expected in zip(first[name], first["peft"]) for a, b in zip(step, expected)),
        "peak_mb": {name: measured["peak_mb"] for name, measured in peaks.items()},
        "fastest": min(PATHS, key=median.get),
    }
    result["machine"]["load_average_end"] = os.getloadavg()
    result["wall_s"] = round(time.time() - started, 1)
    print("| path | step ms | time vs peft | TFLOP/s | peak MB |\n|---|---|---|---|---|")
    for name in PATHS:
        print(f"| {name} | {median[name]:.0f} | {result['time_vs_peft'][name]:.2f} | {result['rates']['tflops_per_s'][name]:.3f} "
              f"| {result['peak_mb'].get(name, float('nan')):.0f} |")
    print(json.dumps({"fastest": result["fastest"], "losses_agree": result["losses_agree"], "wall_s": result["wall_s"]}))
    write(result, args.output)
    return result


if __name__ == "__main__":
    main()
