"""How many CPU threads the testbed's unlearning step should use: 1 against all of them, on idle
cores and with one core kept busy by another process, side by side in one run.

The step is the engine's own (`stepbench.variants.peel_variant`: `compute_gradients` and the
AdamW update) on the real testbed model (testbed:base, an 8-layer GPT-NeoX) with
configs/testbed_lora.yaml's settings: LoRA, max_entropy_kl forget loss, L2 retain loss at the
target layer, 32 examples a batch. Each (threads, load) cell runs in a fresh process (torch's
thread pool is fixed once it starts) with OMP_NUM_THREADS and torch.set_num_threads set; "loaded"
starts a busy-loop process first (what a second job on a shared machine does) and stops it after.
The cells are run in rounds, alternating, so a change in the machine's other work touches all of
them; each cell's time is the median step of its rounds. Read the ratios.

    python benchmarks/thread_bench.py --output benchmarks/results/cpu-testbed-threads.json
    python benchmarks/thread_bench.py --quick   # a smoke run: 1 round, 2 steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stepbench package beside this file

LAYER = 5  # the testbed schedule's middle phase (7, 5, 3)
BUSY_LOOP = "while True: pass"


def worker(threads: int, steps: int, warmup: int, seq_len: int) -> dict:
    """Median milliseconds of `steps` unlearning steps on testbed:base with `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    from stepbench.timing import Clock
    from stepbench.variants import peel_variant, peel_weights
    from stepbench.workload import Settings

    from peel.config import UnlearnConfig
    from peel.models import load_model
    from peel.unlearning.objectives import Batch

    class Testbed(Settings):
        num_layers = 8  # testbed:base

    settings = Testbed(model="testbed", batch_size=32, seq_len=seq_len, warmup=warmup, steps=steps, sweep_steps=0,
                       sweep_points=0, modes=["lora"], target_layer=LAYER, retain_layers="target",
                       forget_loss="max_entropy_kl", threads=threads, lr=3e-3)
    model = load_model("testbed:base", "float32").eval()
    vocab = model.config.vocab_size

    def batch(seed: int) -> Batch:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(vocab, (settings.batch_size, seq_len), generator=generator)
        return Batch(ids, torch.ones_like(ids), None, right_padded=True)

    clock = Clock("cpu")
    step = peel_variant(peel_weights(model, "lora", settings), settings, LAYER, clock,
                        UnlearnConfig(forget_loss="max_entropy_kl", retain_loss="l2", retain_layers="target", grad_filter="none"))
    forget, retain = batch(1), batch(2)
    times = []
    for index in range(warmup + steps):
        clock.start()
        begin = time.perf_counter()
        step(forget, retain)
        if index >= warmup:
            times.append((time.perf_counter() - begin) * 1000)
    return {"threads": torch.get_num_threads(), "step_ms": times}


def run_cell(threads: int, loaded: bool, arguments: argparse.Namespace) -> dict:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if loaded else None
    try:
        completed = subprocess.run(
            [sys.executable, __file__, "--worker", str(threads), "--steps", str(arguments.steps), "--warmup",
             str(arguments.warmup), "--seq-len", str(arguments.seq_len)],
            capture_output=True, text=True, env=environment, check=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=64, help="Tokens per example (testbed documents are about 60).")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 steps.")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker is not None:
        print(json.dumps(worker(arguments.worker, arguments.steps, arguments.warmup, arguments.seq_len)))
        return
    if arguments.quick:
        arguments.rounds, arguments.steps = 1, 2
    every = os.cpu_count() or 1
    cells = [(threads, loaded) for loaded in (False, True) for threads in (1, every)]
    measured: dict[tuple, list[float]] = {cell: [] for cell in cells}
    for round_index in range(arguments.rounds):
        for cell in cells if round_index % 2 == 0 else reversed(cells):
            measured[cell] += run_cell(*cell, arguments)["step_ms"]
            print(f"round {round_index}: threads {cell[0]}, {'loaded' if cell[1] else 'idle'}: "
                  f"{statistics.median(measured[cell]):.0f} ms", flush=True)
    median = {cell: statistics.median(times) for cell, times in measured.items()}
    rows = {f"{'loaded' if loaded else 'idle'}": {
        "ms_1_thread": round(median[(1, loaded)]), f"ms_{every}_threads": round(median[(every, loaded)]),
        "all_threads_over_1": round(median[(every, loaded)] / median[(1, loaded)], 2)} for loaded in (False, True)}
    result = {
        "benchmark": "thread_bench", "model": "testbed:base (8-layer GPT-NeoX)", "batch": f"32 x {arguments.seq_len} tokens",
        "step": "LoRA, max_entropy_kl, L2 retain at the target layer (configs/testbed_lora.yaml), layer 5",
        "cpu_count": every, "load_average_after": os.getloadavg(), "rounds": arguments.rounds, "steps_per_round": arguments.steps,
        "results": rows, "faster": {key: ("1 thread" if row["all_threads_over_1"] > 1 else f"{every} threads")
                                    for key, row in rows.items()},
        "date": time.strftime("%Y-%m-%d"),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if arguments.output:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
