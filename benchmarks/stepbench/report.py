"""A result's verdicts and tables: the issues' targets, and the README's markdown."""

from __future__ import annotations

import json
from pathlib import Path

# preset -> the targets its result is held to: (mode, where the value is in the mode's row, at most / at least, bound).
TARGETS = {
    # Issue 5, headline shape (Pythia-160M, 2 x 256 tokens, random_ce, L2 on all layers).
    "headline": [("lora", ("memory_vs_reference",), "<=", 0.65), ("lora", ("time_vs_reference",), "<=", 0.85),
                 ("lora", ("time_vs_floor",), "<=", 1.15)],
    # Issue 13, long sequences on CPU (Pythia-160M, 2 x 2048 tokens, max_entropy_kl, L2 on all layers).
    "long": [("lora", ("memory_vs_reference",), "<=", 0.40), ("lora", ("time_vs_reference",), "<=", 0.85)],
    # Issue 13 on a GPU (Pythia-1B shape, bf16): 4 x 512 and 16 x 512 tokens.
    "gpu-batch4": [("lora", ("time_vs_reference",), "<=", 0.80), ("full", ("time_vs_reference",), "<=", 0.80)],
    "gpu-batch16": [("lora", ("rates", "share_of_peak", "peel"), ">=", 0.35),
                    ("full", ("rates", "share_of_peak", "peel"), ">=", 0.50)],
}


def targets_met(result: dict, preset: str) -> dict:
    met = {}
    for mode, path, relation, bound in TARGETS.get(preset, []):
        value = result["modes"].get(mode)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            met[f"{mode}_{path[1] if len(path) > 1 else path[0]}{relation}{bound}"] = value <= bound if relation == "<=" else value >= bound
    if "full_original_weights" in result:
        met["full_originals<=bound"] = result["full_original_weights"]["met"]
    return met


def markdown(result: dict) -> str:
    """The README's tables for one result."""
    lines = ["| mode | peel ms | reference ms | floor ms | peel/ref | peel/floor | FLOPs peel/ref | peel TFLOP/s | peel MB "
             "| reference MB | floor MB | peel/ref MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, row in result["modes"].items():
        memory = (f"{row['peel_peak_mb']:.0f} | {row['reference_peak_mb']:.0f} | {row['floor_peak_mb']:.0f} "
                  f"| {row['memory_vs_reference']:.2f}") if "peel_peak_mb" in row else "- | - | - | -"
        lines.append(
            f"| {mode} | {row['peel_ms']:.0f} | {row['reference_ms']:.0f} | {row['floor_ms']:.0f} | {row['time_vs_reference']:.2f} "
            f"| {row['time_vs_floor']:.2f} | {row['flops_vs_reference']:.2f} | {row['rates']['tflops_per_s']['peel']:.3f} | {memory} |"
        )
    if "target_layer_sweep" in result:
        lines += ["", "| target layer | step ms | forget ms | retain ms |", "|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['step_ms']:.0f} | {r['forget_ms']:.0f} | {r['retain_ms']:.0f} |" for r in result["target_layer_sweep"]["rows"]]
    return "\n".join(lines)


def write(result: dict, output: Path | None) -> None:
    """The result as indented JSON at `output` (its folder made first), when one was asked for."""
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1) + "\n")
