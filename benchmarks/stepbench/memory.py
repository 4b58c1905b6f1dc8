"""Peak memory of a variant's step, each in a fresh process of its own.

A worker builds its model and variant, takes `memory_steps` steps and reports its peak: VmHWM
(peak RSS) on CPU, the allocator's peak from after setup on a GPU. Workers run one at a time
by default, and before the parent builds any model of its own: at the long preset the two-copy
variant alone needs ~16 GB, so two workers side by side, or one beside a timing process holding
its models, would not fit a 24 GB machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Callable

import torch

from stepbench.timing import Clock
from stepbench.workload import Settings, build_model


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across
    fork and exec, so a worker started by a large parent would report the parent's size."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def allocated_mb(cuda: bool) -> float:
    return torch.cuda.memory_allocated() / 2**20 if cuda else current_rss_mb()


def worker(build_step: Callable, batches: Callable, settings: Settings) -> dict:
    """In its own process: `build_step(model, clock)` on a fresh model, `memory_steps` steps on
    `batches()`, and the peak. `setup_growth_mb` is what building the variant added."""
    cuda = settings.device.startswith("cuda")
    result = {"after_imports_mb": round(current_rss_mb(), 1)}
    model = build_model(settings)
    before = allocated_mb(cuda)
    clock = Clock(settings.device)
    step = build_step(model, clock)
    result["setup_growth_mb"] = round(allocated_mb(cuda) - before, 1)
    forget, retain = batches()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # the peak from here on includes everything now held
    for _ in range(settings.memory_steps):
        clock.start()
        step(forget, retain)
    result["peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb(), 1)
    return result


def variant_parser(description: str, shapes: bool = True):
    """The command line the variant benchmarks share: --quick, --steps, --threads, --device,
    --output and the hidden --worker (`measure`'s), with `shapes` also --model and --modes."""
    import argparse
    from pathlib import Path

    from stepbench.workload import MODES

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, few steps: under a minute")
    if shapes:
        parser.add_argument("--model", help="GPT-NeoX shape of step_bench.py (default: the preset's)")
    parser.add_argument("--steps", type=int, help="timed steps per variant")
    if shapes:
        parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: lora,full")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="write the results JSON here")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "VARIANT", "SETTINGS"), help=argparse.SUPPRESS)
    return parser


def serve(worker_arguments: list[str], step: Callable, batches: Callable) -> None:
    """A benchmark script run as `--worker MODE VARIANT SETTINGS` (by `measure`): set the threads,
    build `step(model, mode, variant, settings, clock)` on a fresh model, run it on
    `batches(settings, variant)` and print the peak as one JSON line."""
    mode, name, text = worker_arguments
    settings = Settings(**json.loads(text))
    torch.set_num_threads(settings.threads)
    build = lambda model, clock: step(model, mode, name, settings, clock)
    print(json.dumps(worker(build, lambda: batches(settings, name), settings)))


def measure(script: str, mode: str, names, settings: Settings) -> dict[str, dict]:
    """Each of `names` measured by `script --worker MODE NAME SETTINGS` in a fresh process."""

    def run(name: str) -> tuple[str, dict]:
        command = [sys.executable, script, "--worker", mode, name, json.dumps(asdict(settings))]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode:
            raise RuntimeError(f"memory worker {mode}/{name} failed:\n{completed.stderr[-3000:]}")
        print(f"  memory {mode}/{name}: {completed.stdout.strip().splitlines()[-1]}", flush=True)
        return name, json.loads(completed.stdout.strip().splitlines()[-1])

    # On a GPU always one at a time: none then competes with another for the card's memory.
    jobs = 1 if settings.device.startswith("cuda") else settings.memory_jobs
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(pool.map(run, names))
