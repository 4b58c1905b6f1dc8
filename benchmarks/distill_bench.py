"""What a `peel distill` step costs beside a plain peel unlearning step, at the step benchmark's shape.

Variants, each built from its own copy of the same model and stepping on the same batches:

- peel_lora   the engine's unlearning step with LoRA (step_bench.py's peel variant: probe on the
              forget batch, L2 retain on the retain batch, AdamW on the adapters);
- peel_full   the same with full fine-tuning of the target layer;
- distill     `peel.distill`'s step: the teacher's no-grad pass and the student's forward and
              backward on the retain batch (`distill.kl_backward`, KL(teacher || student) per
              token, chunked as in a run), clipping, and AdamW on every parameter of the student.
              It holds two models (teacher and student) and AdamW's two moments of the whole
              student: its memory is that of training a whole model, not of an adapter.

Times are interleaved in one process (read the ratios); peak memory comes from one fresh process
per variant, one at a time, before the timing process builds its models.

    python benchmarks/distill_bench.py --quick --output /tmp/distill_quick.json
    python benchmarks/distill_bench.py --output benchmarks/results/cpu-distill-pythia160m-fp32.json
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
from stepbench.workload import Settings, batches, build_model, tensor_bytes  # noqa: E402
from step_bench import PRESETS  # noqa: E402

from peel.distill import Network, StudentForward, kl_backward  # noqa: E402
from peel.anatomy import find_anatomy  # noqa: E402

VARIANTS = ("peel_lora", "peel_full", "distill")
BASELINE = "peel_lora"


def distill_variant(model, settings: Settings, clock: Clock):
    """peel.distill's step: `model` is the teacher, a copy of it the student."""
    student_model = copy.deepcopy(model).requires_grad_(True)
    teacher = Network(model.requires_grad_(False), find_anatomy(model))
    student = Network(student_model, find_anatomy(student_model))
    forward = StudentForward(student)
    parameters = list(student_model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr)

    def step(forget, retain):
        per_example = kl_backward(forward, student, teacher, retain, 1.0 / settings.batch_size, settings.loss_chunk_tokens)
        clock.lap("retain")
        torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
        loss = per_example.mean().item()  # the step's one read, as in distill()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.lap("update")
        return [0.0, loss]

    return step


def variant_step(model, name: str, settings: Settings, clock: Clock):
    if name == "distill":
        return distill_variant(model, settings, clock)
    mode = name.removeprefix("peel_")
    return peel_variant(peel_weights(model, mode, settings), settings, settings.layer, clock)


def markdown(result: dict) -> str:
    lines = [f"| variant | step ms | time vs {BASELINE} | peak MB | peak vs {BASELINE} |", "|---|---|---|---|---|"]
    for name in VARIANTS:
        lines.append(f"| {name} | {result['step_ms'][name]:.0f} | {result['time_vs_peel_lora'][name]:.2f} "
                     f"| {result['peak_mb'][name]:.0f} | {result['memory_vs_peel_lora'][name]:.2f} |")
    return "\n".join(lines) + f"\n\nModel {result['model_mb']:.0f} MB."


def main(argv=None) -> dict | None:
    args = memory.variant_parser(__doc__, shapes=False).parse_args(argv)
    if args.worker:
        memory.serve(args.worker, lambda model, mode, name, settings, clock: variant_step(model, name, settings, clock),
                     lambda settings, name: batches(settings))
        return None

    preset = dict(PRESETS["quick" if args.quick else "headline"])
    if args.steps is not None:
        preset["steps"] = args.steps
    settings = Settings(**preset, threads=args.threads, device=args.device, forget_loss="max_entropy_kl", retain_layers="all")
    torch.set_num_threads(settings.threads)
    started = time.time()
    result = {**hardware.environment(settings), "settings": asdict(settings)}
    peaks = memory.measure(__file__, "all", VARIANTS, settings)
    base_model = build_model(settings)
    result["model_mb"] = round(tensor_bytes(base_model) / 2**20, 1)
    clock = Clock(settings.device)
    data = batches(settings)
    built = {name: variant_step(copy.deepcopy(base_model), name, settings, clock) for name in VARIANTS}
    timings = interleave({name: lambda name=name: built[name](*data) for name in VARIANTS}, clock, settings.warmup, settings.steps, "distill")
    result["step_ms"] = {name: round(timings.median(name), 1) for name in VARIANTS}
    result["time_vs_peel_lora"] = {name: timings.paired(name, BASELINE) for name in VARIANTS}
    result["cpu_time_vs_peel_lora"] = {name: timings.paired(name, BASELINE, cpu=True) for name in VARIANTS}
    result["peak_mb"] = {name: peaks[name]["peak_mb"] for name in VARIANTS}
    result["memory_vs_peel_lora"] = {name: round(peaks[name]["peak_mb"] / peaks[BASELINE]["peak_mb"], 3) for name in VARIANTS}
    result["wall_s"] = round(time.time() - started, 1)
    print(markdown(result))
    write(result, args.output)
    return result


if __name__ == "__main__":
    main()
