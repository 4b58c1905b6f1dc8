"""What each attack kind costs beside a 20-step fine-tuning attack, on the testbed's base model.

Each attack runs as `peel tamper` runs it (`running.run_attack`: a fresh load of the target, the
kind's run with its training and evaluations), one after another in one process. Every attack
measures its own untouched step 0 where it needs one (in a grid the attacks share it), so each row
is the whole cost of that attack alone. `evaluation` is one evaluation of the tasks on the loaded
model, the unit the others' evaluations are made of.

Per attack: wall seconds (time.perf_counter) and this process's CPU seconds (time.process_time);
with OMP_NUM_THREADS=1 the two are close unless other work shares the cores. prune by: change is
measured against the base model itself (it then prunes nothing, but loads the original and
compares every weight, which is its cost).

    OMP_NUM_THREADS=1 python benchmarks/attack_cost_bench.py --output benchmarks/results/attack_cost.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stepbench package beside this file
from stepbench import hardware  # noqa: E402
from stepbench.report import write  # noqa: E402

from peel.attacks.plan import plan_attacks  # noqa: E402
from peel.attacks.running import Session, run_attack  # noqa: E402
from peel.runs.targets import load_target_model  # noqa: E402

TARGET = "testbed:base"
GRID = ("[{kind: fine_tune}, {kind: soft_prompt}, {kind: latent}, {kind: prune}, {kind: prune, by: change}, "
        "{kind: prompt}]")


def overrides(steps: int, eval_every: int, limit: int) -> list[str]:
    return ["tamper.tasks=[testbed_forget,testbed_retain]", "tamper.data.path=testbed:tamper", "tamper.few_shot=[]",
            f"tamper.steps={steps}", f"tamper.eval_every={eval_every}", "tamper.per_device_batch_size=4",
            "tamper.max_length=128", "tamper.dtype=float32", f"eval.limit={limit}", f"tamper.grid={GRID}"]


@contextlib.contextmanager
def counting_evaluations():
    """Within the `with`, peel.evaluation.evaluate (what the fine-tuning loop and every
    Session.accuracy call) records in the list it yields the tasks of each call: one evaluation each."""
    import peel.evaluation

    calls, evaluate = [], peel.evaluation.evaluate

    def counted(model, tokenizer, tasks, *args, **kwargs):
        calls.append(list(tasks))
        return evaluate(model, tokenizer, tasks, *args, **kwargs)

    peel.evaluation.evaluate = counted
    try:
        yield calls
    finally:
        peel.evaluation.evaluate = evaluate


def timed(run) -> tuple[object, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}


def measure(target_plan) -> dict:
    """One evaluation of the untouched model, then every attack of the plan: wall and CPU seconds, evaluations."""
    settings = target_plan.attacks[0].settings
    model, tokenizer = load_target_model(target_plan.target, settings.dtype)
    session = Session(model, tokenizer, target_plan.target.config.eval, list(settings.tasks), {}, ())
    rows = {}
    with counting_evaluations() as calls:
        untouched, rows["evaluation"] = timed(lambda: session.accuracy(list(settings.tasks)))
        rows["evaluation"].update(kind="evaluation", evaluations=1, task_evaluations=len(settings.tasks), last=untouched)
        del model, session
        for attack in target_plan.attacks:
            calls.clear()
            record, rows[attack.name] = timed(lambda attack=attack: run_attack(target_plan, attack, {}))
            rows[attack.name].update(kind=attack.kind, evaluations=len(calls), task_evaluations=sum(map(len, calls)),
                                     last=record["curve"][-1])
            print(f"{attack.name}: {rows[attack.name]['wall_s']} s wall, {rows[attack.name]['cpu_s']} s CPU", flush=True)
    return rows


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training attacks' steps (fine_tune, soft_prompt, latent)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--limit", type=int, default=100, help="questions per task (eval.limit)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(arguments)

    with tempfile.TemporaryDirectory() as folder:
        [target_plan] = plan_attacks([TARGET], overrides(args.steps, args.eval_every, args.limit), [], folder, TARGET)
    result = {
        "target": TARGET,
        "settings": {"steps": args.steps, "eval_every": args.eval_every, "eval_limit": args.limit,
                     "per_device_batch_size": 4, "max_length": 128, "dtype": "float32",
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "attacks": measure(target_plan),
        "environment": hardware.environment(SimpleNamespace(device="cpu")),
        "torch_threads": torch.get_num_threads(),
    }
    write(result, args.output)


if __name__ == "__main__":
    main()
