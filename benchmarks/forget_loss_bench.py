"""What the newer forget losses cost: peel's step with each, against max_entropy_kl.

The same step as `step_bench.py`'s peel variant (the engine's `compute_gradients` and update, on
the same model, batches and settings), with the forget loss swapped:

- max_entropy_kl   the baseline;
- top_k_entropy    maximum entropy over the K largest logits (K 100): a top-k per position;
- npo              against the original model: one more no-grad forward pass with every layer
                   original (adapters off / originals exchanged in), never a copy of the model;
- keyword_mask     max_entropy_kl with half the tokens masked out, as a keyword list does.

Times are interleaved in one process (read the ratios); peak memory comes from one fresh process
per variant, one at a time, before the timing process builds its models. A second model would
show as a peak grown by about the model's size (`model_mb`); the extra memory each variant needs
is reported beside it.

    python benchmarks/forget_loss_bench.py --quick --output /tmp/forget_quick.json
    python benchmarks/forget_loss_bench.py --output benchmarks/results/cpu-forget-losses-pythia160m-fp32.json
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stepbench package beside this file
from stepbench import hardware, memory  # noqa: E402
from stepbench.report import write  # noqa: E402
from stepbench.timing import Clock, interleave  # noqa: E402
from stepbench.variants import peel_variant, peel_weights  # noqa: E402
from stepbench.workload import Settings, build_model, make_batch, tensor_bytes  # noqa: E402
from step_bench import PRESETS  # noqa: E402

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


def batches(settings: Settings, name: str):
    """The step benchmark's batches, with every other forget token masked out for the keyword variant."""
    forget = make_batch(settings, 1, with_targets=False)
    _, share = VARIANTS[name]
    if share is not None:
        keep = torch.zeros_like(forget.attention_mask)
        keep[:, :: round(1 / share)] = 1
        forget.loss_mask = keep
    return forget, make_batch(settings, 2, with_targets=False)


def time_mode(base_model, mode: str, settings: Settings) -> dict:
    clock = Clock(settings.device)
    data = {name: batches(settings, name) for name in VARIANTS}
    built = {name: variant_step(copy.deepcopy(base_model), mode, name, settings, clock) for name in VARIANTS}
    timings = interleave({name: lambda name=name: built[name](*data[name]) for name in VARIANTS},
                         clock, settings.warmup, settings.steps, mode)
    return {"step_ms": {name: round(timings.median(name), 1) for name in VARIANTS},
            "time_vs_max_entropy_kl": {name: timings.paired(name, BASELINE) for name in VARIANTS}}


def markdown(result: dict) -> str:
    lines = ["| mode | forget loss | step ms | time vs max_entropy_kl | peak MB | extra peak MB (model is "
             f"{result['model_mb']:.0f} MB) |", "|---|---|---|---|---|---|"]
    for mode, row in result["modes"].items():
        for name in VARIANTS:
            lines.append(f"| {mode} | {name} | {row['step_ms'][name]:.0f} | {row['time_vs_max_entropy_kl'][name]:.2f} "
                         f"| {row['peak_mb'][name]:.0f} | {row['extra_peak_mb'][name]:+.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    args = memory.variant_parser(__doc__).parse_args(argv)
    if args.worker:
        memory.serve(args.worker, variant_step, batches)
        return None

    preset = dict(PRESETS["quick" if args.quick else "headline"])
    preset |= {key: getattr(args, key) for key in ("model", "steps") if getattr(args, key) is not None}
    settings = Settings(**preset, modes=args.modes.split(","), threads=args.threads, device=args.device,
                        forget_loss="max_entropy_kl", retain_layers="all")
    torch.set_num_threads(settings.threads)
    started = time.time()
    result = {**hardware.environment(settings), "settings": asdict(settings), "modes": {}}
    peaks = {mode: memory.measure(__file__, mode, VARIANTS, settings) for mode in settings.modes}
    base_model = build_model(settings)
    result["model_mb"] = round(tensor_bytes(base_model) / 2**20, 1)
    for mode in settings.modes:
        row = time_mode(base_model, mode, settings)
        row["peak_mb"] = {name: measured["peak_mb"] for name, measured in peaks[mode].items()}
        row["extra_peak_mb"] = {name: round(peak - row["peak_mb"][BASELINE], 1) for name, peak in row["peak_mb"].items()}
        result["modes"][mode] = row
    result["wall_s"] = round(time.time() - started, 1)
    print(markdown(result))
    write(result, args.output)
    return result


if __name__ == "__main__":
    main()
