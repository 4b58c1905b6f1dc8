"""What tamper resistance costs: peel's step with each `unlearn.adversary`, against plain peel.

The same step as `step_bench.py`'s peel variant (the engine's `compute_gradients` and update, on
the same model, batches and settings: max_entropy_kl forget loss, L2 retain on every layer), with
the adversary the engine would build (adversary.py, at its config defaults):

- none      plain peel, the baseline;
- finetune  every step attacked (adversary_every 1, the most an attacking step costs): a copy of
            the trained parameters, adversary_steps (4) AdamW steps of next-token loss on
            forget-domain text (the forget batch), one more forget pass at the attacked point, the
            parameters put back. With adversary_every N the average step costs 1/N of the extra;
- latent    latent_steps (4) of projected gradient descent on a perturbation of the target
            layer's output (one no-grad pass to the target layer, four probe passes with gradient
            to the perturbation only), then the forget loss under it.

Times are interleaved in one process (read the ratios); peak memory comes from one fresh process
per variant, one at a time (the issue's bar: the finetune adversary's peak at most 1.2x plain).

    python benchmarks/adversary_bench.py --quick --output /tmp/adversary_quick.json
    python benchmarks/adversary_bench.py --steps 3 --output benchmarks/results/cpu-adversaries-pythia160m-fp32.json
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

from peel.unlearning.adversaries import ADVERSARIES  # noqa: E402
from peel.unlearning.batches import Corpus  # noqa: E402
from peel.config import UnlearnConfig  # noqa: E402

VARIANTS = tuple(ADVERSARIES)  # none, finetune, latent
BASELINE = "none"


def variant_step(model, mode: str, name: str, settings: Settings, clock: Clock):
    unlearn = UnlearnConfig(forget_loss="max_entropy_kl", retain_loss="l2", grad_filter="none", l2sp_coef=0.0, adversary=name)
    forget, _ = batches(settings)
    lengths = forget.attention_mask.sum(dim=1).tolist()
    attack_text = Corpus([row[:length] for row, length in zip(forget.input_ids.tolist(), lengths)], 0, settings.device)

    return peel_variant(peel_weights(model, mode, settings), settings, settings.layer, clock, unlearn, attack_text)


def batches(settings: Settings):
    return make_batch(settings, 1, with_targets=False), make_batch(settings, 2, with_targets=False)


def time_mode(base_model, mode: str, settings: Settings) -> dict:
    clock = Clock(settings.device)
    data = batches(settings)
    built = {name: variant_step(copy.deepcopy(base_model), mode, name, settings, clock) for name in VARIANTS}
    timings = interleave({name: lambda name=name: built[name](*data) for name in VARIANTS},
                         clock, settings.warmup, settings.steps, mode)
    return {"step_ms": {name: round(timings.median(name), 1) for name in VARIANTS},
            "time_vs_none": {name: timings.paired(name, BASELINE) for name in VARIANTS},
            "cpu_time_vs_none": {name: timings.paired(name, BASELINE, cpu=True) for name in VARIANTS}}


def markdown(result: dict) -> str:
    lines = ["| mode | adversary | step ms | time vs none | peak MB | peak vs none |", "|---|---|---|---|---|---|"]
    for mode, row in result["modes"].items():
        for name in VARIANTS:
            lines.append(f"| {mode} | {name} | {row['step_ms'][name]:.0f} | {row['time_vs_none'][name]:.2f} "
                         f"| {row['peak_mb'][name]:.0f} | {row['peak_vs_none'][name]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    args = memory.variant_parser(__doc__).parse_args(argv)
    if args.worker:
        memory.serve(args.worker, variant_step, lambda settings, name: batches(settings))
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
        row["peak_vs_none"] = {name: round(peak / row["peak_mb"][BASELINE], 3) for name, peak in row["peak_mb"].items()}
        result["modes"][mode] = row
    result["wall_s"] = round(time.time() - started, 1)
    print(markdown(result))
    write(result, args.output)
    return result


if __name__ == "__main__":
    main()
