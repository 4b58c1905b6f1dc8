"""What the newer forget losses cost: peel's step with each, against max_entropy_kl.

The same step as `step_bench.py`'s peel variant (the engine's `compute_gradients` and update, on
the same model, batches and settings), with the forget loss swapped:

- max_entropy_kl   the baseline;
- top_k_entropy    maximum entropy over the K largest logits (K 100): a top-k per position;
- npo              against the original model: one more no-grad forward pass with every layer
                   original (adapters off / originals exchanged in), never a copy of the model;
- keyword_mask     max_entropy_kl with half the tokens masked out, as a keyword list does.

Times are interleaved in one process (read the ratios); peak memory comes from one fresh process
per variant. A second model would show as a peak grown by about the model's size (`model_mb`);
the extra memory each variant needs is reported beside it.

    python benchmarks/forget_loss_bench.py --quick --output /tmp/forget_quick.json
    python benchmarks/forget_loss_bench.py --output benchmarks/results/cpu-forget-losses-pythia160m-fp32.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_bench import (  # noqa: E402  (the step benchmark's model, batches and peel step, shared)
    HEADLINE, MODES, QUICK, Clock, Settings, build_model, environment, make_batch, peak_rss_mb, peel_variant,
    peel_weights, tensor_bytes,
)

from peel.config import UnlearnConfig  # noqa: E402

# variant -> (forget loss, share of forget tokens a keyword mask keeps; None = no mask)
VARIANTS = {
    "max_entropy_kl": ("max_entropy_kl", None),
    "top_k_entropy": ("top_k_entropy", None),
    "npo": ("npo", None),
    "keyword_mask": ("max_entropy_kl", 0.5),
}
BASELINE = "max_entropy_kl"


def variant_step(model, mode: str, name: str, settings: Settings, clock: Clock):
    loss, _ = VARIANTS[name]
    unlearn = UnlearnConfig(forget_loss=loss, retain_loss="l2", grad_filter="none", l2sp_coef=0.0, top_k=100)
    return peel_variant(peel_weights(model, mode, settings), settings, settings.layer, clock, unlearn)


def forget_batch(settings: Settings, name: str):
    """The step benchmark's forget batch, with every other token masked out for the keyword variant."""
    batch = make_batch(settings, 1, with_targets=False)
    _, share = VARIANTS[name]
    if share is not None:
        keep = torch.zeros_like(batch.attention_mask)
        keep[:, :: round(1 / share)] = 1
        batch.loss_mask = keep
    return batch


def time_mode(base_model, mode: str, settings: Settings) -> dict:
    clock = Clock(settings.device)
    names = list(VARIANTS)
    steps = {name: variant_step(copy.deepcopy(base_model), mode, name, settings, clock) for name in names}
    forget = {name: forget_batch(settings, name) for name in names}
    retain = make_batch(settings, 2, with_targets=False)
    step_ms = {name: [] for name in names}
    for round_index in range(settings.warmup + settings.steps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            clock.start()
            steps[name](forget[name], retain)
            if round_index >= settings.warmup:
                step_ms[name].append(sum(clock.parts.values()))
        print(f"  {mode} round {round_index + 1}/{settings.warmup + settings.steps}: "
              + ", ".join(f"{name} {step_ms[name][-1]:.0f} ms" for name in names if step_ms[name]), flush=True)
    # Ratios within a round share the machine's load of that moment: their median is the steadiest.
    paired = {name: round(statistics.median(a / b for a, b in zip(step_ms[name], step_ms[BASELINE])), 3) for name in names}
    return {"step_ms": {name: round(statistics.median(values), 1) for name, values in step_ms.items()},
            "time_vs_max_entropy_kl": paired}


def memory_worker(mode: str, name: str, settings: Settings) -> dict:
    model = build_model(settings)
    clock = Clock(settings.device)
    step = variant_step(model, mode, name, settings, clock)
    forget, retain = forget_batch(settings, name), make_batch(settings, 2, with_targets=False)
    cuda = settings.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(settings.memory_steps):
        clock.start()
        step(forget, retain)
    return {"peak_mb": round(torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb(), 1)}


def measure_memory(mode: str, settings: Settings) -> dict[str, float]:
    def run(name: str) -> tuple[str, float]:
        command = [sys.executable, __file__, "--worker", mode, name, json.dumps(asdict(settings))]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode:
            raise RuntimeError(f"memory worker {mode}/{name} failed:\n{completed.stderr[-3000:]}")
        return name, json.loads(completed.stdout.strip().splitlines()[-1])["peak_mb"]

    jobs = 1 if settings.device.startswith("cuda") else settings.memory_jobs
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(run, VARIANTS))


def markdown(result: dict) -> str:
    lines = ["| mode | forget loss | step ms | time vs max_entropy_kl | peak MB | extra peak MB (model is "
             f"{result['model_mb']:.0f} MB) |", "|---|---|---|---|---|---|"]
    for mode, row in result["modes"].items():
        for name in VARIANTS:
            lines.append(f"| {mode} | {name} | {row['step_ms'][name]:.0f} | {row['time_vs_max_entropy_kl'][name]:.2f} "
                         f"| {row['peak_mb'][name]:.0f} | {row['extra_peak_mb'][name]:+.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, few steps: under a minute")
    parser.add_argument("--model", help="GPT-NeoX shape of step_bench.py (default: the preset's)")
    parser.add_argument("--steps", type=int, help="timed steps per variant")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: lora,full")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="write the results JSON here")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "VARIANT", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        mode, name, text = args.worker
        settings = Settings(**json.loads(text))
        torch.set_num_threads(settings.threads)
        print(json.dumps(memory_worker(mode, name, settings)))
        return None

    preset = dict(QUICK if args.quick else HEADLINE)
    preset |= {key: getattr(args, key) for key in ("model", "steps") if getattr(args, key) is not None}
    settings = Settings(**preset, modes=args.modes.split(","), threads=args.threads, device=args.device,
                        forget_loss="max_entropy_kl", retain_layers="all")
    torch.set_num_threads(settings.threads)
    started = time.time()
    base_model = build_model(settings)
    result = {**environment(settings), "settings": asdict(settings), "model_mb": round(tensor_bytes(base_model) / 2**20, 1),
              "modes": {}}
    for mode in settings.modes:
        row = time_mode(base_model, mode, settings)
        row["peak_mb"] = measure_memory(mode, settings)
        row["extra_peak_mb"] = {name: round(peak - row["peak_mb"][BASELINE], 1) for name, peak in row["peak_mb"].items()}
        result["modes"][mode] = row
    result["wall_s"] = round(time.time() - started, 1)
    print(markdown(result))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
