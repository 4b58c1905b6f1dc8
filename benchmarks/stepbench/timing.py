"""Timing steps on a shared machine: interleaved rounds, wall and CPU clocks, paired ratios, FLOPs.

The variants run one step each per round, in an order that rotates every round, so each sees the
same load on average; a ratio taken within a round shares that round's load, and the median of
those ratios is the steadiest comparison. With one thread the process CPU time excludes time
other processes held the core. FLOPs do not depend on the load at all.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


class Clock:
    """Milliseconds per named part of a step (wall clock), and the step's process CPU time."""

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


@dataclass
class Timings:
    """Per variant: the timed steps' wall and CPU milliseconds and parts, and every step's return value."""

    step_ms: dict[str, list[float]] = field(default_factory=dict)
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)
    parts_ms: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    outputs: dict[str, list] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.step_ms[name])

    def median_parts(self, name: str) -> dict[str, float]:
        rows = self.parts_ms[name]
        return {part: round(statistics.median(row[part] for row in rows), 1) for part in rows[0]}

    def paired(self, name: str, other: str, cpu: bool = False) -> float:
        """Median over rounds of name's time / other's time in the same round."""
        values = self.cpu_ms if cpu else self.step_ms
        return round(statistics.median(a / b for a, b in zip(values[name], values[other])), 3)


def interleave(steps: dict[str, Callable[[], object]], clock: Clock, warmup: int, timed: int, label: str) -> Timings:
    """Run every step `warmup + timed` times, one of each per round, rotating the order."""
    names = list(steps)
    timings = Timings(*({name: [] for name in names} for _ in range(4)))
    for round_index in range(warmup + timed):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            clock.start()
            timings.outputs[name].append(steps[name]())
            if round_index >= warmup:
                timings.step_ms[name].append(sum(clock.parts.values()))
                timings.cpu_ms[name].append(clock.cpu_ms())
                timings.parts_ms[name].append(dict(clock.parts))
        print(f"  {label} round {round_index + 1}/{warmup + timed}: "
              + ", ".join(f"{name} {timings.step_ms[name][-1]:.0f} ms" for name in names if timings.step_ms[name]), flush=True)
    return timings


def count_gflops(step: Callable[[], object], clock: Clock) -> float:
    """Floating-point operations of one more step, counted by torch's FLOP counter."""
    with FlopCounterMode(display=False) as counter:
        clock.start()
        step()
    return counter.get_total_flops() / 1e9


def update(parameters, optimizer, max_grad_norm: float) -> None:
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
