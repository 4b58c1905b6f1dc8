"""Every attack kind against the testbed's models, and which cheap reading predicts the worst case.

For each model source it makes the model (as its config says: `peel unlearn`, `peel distill`),
attacks it with the demo's grid (configs/testbed_lora.yaml's tamper section: full and LoRA
fine-tuning at lr 2e-4 and 1e-3, the benign attack, 0/5-shot, 8/4-bit, orthogonalize) plus every
new kind (prune by WandA and, for models made from testbed:base, by change; every built-in prompt
template; a soft prompt at 20 and at 5 steps; a latent perturbation, epsilon 0.1, 20 steps), reads
it with `peel probe` on the forget task, and writes per model: step 0, the worst case over the
whole grid and the attack that reached it, each kind's worst, and the cheap readings (4-bit,
orthogonalize, the 5-step soft prompt, the probe's, lens' and depth reader's best layer). Every
step drives peel as a user would, through `peel.cli.main([...])`, one process, and each model's
folder under --root is kept: a rerun reuses what is there (finished attacks are read, not rerun).

The cheap readings' cost: for the models named by --time-readings, the 4-bit, orthogonalize and
5-step soft-prompt attacks also run alone (`peel tamper` with a grid of one), each timed; the
probe is timed on every model.

    OMP_NUM_THREADS=1 python benchmarks/attack_kinds_testbed.py --root runs/attack-kinds \
        --output benchmarks/results/attack-kinds-testbed.json base filtered plain distill_a0.8 ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from peel.cli import main as peel

FORGET, RETAIN = "testbed_forget", "testbed_retain"
# Every entry names its data and steps: a grid that sets a key takes no override of it, and the
# targets that are not run folders (testbed:base, testbed:filtered) have no config that sets them.
T, D20 = "data: {path: testbed:tamper}", "steps: 20, data: {path: testbed:tamper}"
DEMO_GRID = [f"{{adapter: full, lr: 2.0e-4, {D20}}}", f"{{adapter: full, lr: 1.0e-3, {D20}}}",
             f"{{adapter: lora, lr: 2.0e-4, {D20}}}", f"{{adapter: lora, lr: 1.0e-3, {D20}}}",
             "{adapter: full, lr: 1.0e-3, steps: 20, data: {path: testbed:retain}}",
             "{kind: quantize, bits: 8}", "{kind: quantize, bits: 4}", f"{{kind: orthogonalize, components: 1, {T}}}"]
NEW_KINDS = [f"{{kind: prune, sparsity: 0.1, {T}}}", "{kind: prompt}", f"{{kind: soft_prompt, {D20}}}",
             f"{{kind: soft_prompt, steps: 5, {T}}}", f"{{kind: latent, epsilon: 0.1, {D20}}}"]
BY_CHANGE = f"{{kind: prune, by: change, sparsity: 0.1, {T}}}"
# testbed_lora.yaml's other tamper and eval settings, so every target is attacked alike
SETTINGS = [f"tamper.tasks=[{FORGET},{RETAIN}]", "tamper.few_shot=[0,5]", "tamper.per_device_batch_size=8",
            "tamper.max_length=128", "tamper.eval_every=10", "tamper.dtype=float32", "eval.batch_size=64",
            "eval.max_length=256"]
CHEAP = {"quantize4": DEMO_GRID[6], "orthogonalize": DEMO_GRID[7], "soft_prompt5": NEW_KINDS[3]}
DISTILL = ["distill.lr=1.0e-3", "distill.lr_scheduler=cosine", "distill.warmup_ratio=0.1",
           "distill.per_device_batch_size=32", "distill.global_batch_size=32", "distill.seed=0"]


def sources(root: Path) -> dict[str, dict]:
    """name -> how the model is made (a list of peel commands, each skipped when its folder is done),
    the target peel tamper / probe take, the original (None: the model is the original or was trained
    apart; it then gets no orthogonalize, prune by change or depth unless `baseline` says)."""
    plain = str(root / "plain")

    def distilled(alpha: float, steps: int) -> dict:
        folder = str(root / f"distill_a{alpha}_s{steps}")
        return {"make": [["distill", plain, "--output-dir", folder, f"distill.alpha={alpha}", f"distill.steps={steps}",
                          *DISTILL]], "needs": ["plain"], "target": folder, "from_base": True,
                "config": f"configs/testbed_resistant.yaml's distill section at alpha {alpha}, {steps} steps, "
                          "on the plain unlearned model"}

    return {
        "base": {"make": [], "target": "testbed:base", "from_base": False, "config": "testbed:base"},
        "filtered": {"make": [], "target": "testbed:filtered", "from_base": False, "baseline": "testbed:base",
                     "config": "testbed:filtered (never saw the forget domain)"},
        "plain": {"make": [["unlearn", "configs/testbed_lora.yaml", f"output_dir={plain}"]], "target": plain,
                  "from_base": True, "config": "configs/testbed_lora.yaml"},
        "adversary": {"make": [["unlearn", "configs/testbed_adversary.yaml", f"output_dir={root / 'adversary'}"]],
                      "target": str(root / "adversary"), "from_base": True, "config": "configs/testbed_adversary.yaml"},
        "latent": {"make": [["unlearn", "configs/testbed_lora.yaml", "unlearn.adversary=latent",
                             "unlearn.latent_epsilon=0.1", "unlearn.latent_steps=2", f"output_dir={root / 'latent'}"]],
                   "target": str(root / "latent"), "from_base": True,
                   "config": "configs/testbed_lora.yaml unlearn.adversary=latent unlearn.latent_epsilon=0.1 "
                             "unlearn.latent_steps=2"},
        "distill_a0.8": distilled(0.8, 300),
        "distill_a0.4": distilled(0.4, 300),
        "distill_a0.6": distilled(0.6, 150),
        "distill_a1.0": distilled(1.0, 300),
    }


def run(words: list[str]) -> float:
    print("+ peel " + " ".join(words), flush=True)
    start = time.perf_counter()
    status = peel(words)
    if status != 0:
        raise SystemExit(f"peel {' '.join(words)} exited {status}")
    return round(time.perf_counter() - start, 1)


def grid_words(entries: list[str]) -> str:
    return "tamper.grid=[" + ", ".join(entries) + "]"


def tamper(target: str, folder: Path, entries: list[str], baseline: str | None, few_shot: bool = True) -> float:
    words = ["tamper", target, "--output-dir", str(folder)] + (["--baseline", baseline] if baseline else [])
    words += SETTINGS + ([] if few_shot else ["tamper.few_shot=[]"]) + [grid_words(entries)]
    return run(words)


def forget_max(attack: dict) -> float:
    return max(point[FORGET] for point in attack["curve"] if FORGET in point)


def summarise(result: dict) -> dict:
    attacks = result["attacks"]
    summary = result["summary"][FORGET]
    by_kind: dict[str, dict] = {}
    for attack in attacks:
        kind = attack["kind"]
        if kind == "soft_prompt" and attack["settings"].get("steps") == 5:
            kind = "soft_prompt_5"
        value = forget_max(attack)
        if kind not in by_kind or value > by_kind[kind]["worst"]:
            by_kind[kind] = {"worst": value, "attack": attack["name"]}
    named = {attack["name"]: attack for attack in attacks}

    def reading(predicate) -> float | None:
        found = [a for a in attacks if predicate(a)]
        return found[0]["curve"][-1][FORGET] if found else None

    # the untouched model: step 0 of the fine-tuning attacks (0-shot evaluation)
    step0 = next(a["curve"][0] for a in attacks if a["kind"] == "fine_tune")
    return {
        "step0": {FORGET: step0[FORGET], RETAIN: step0[RETAIN]},
        "worst": summary["worst"], "worst_step": summary["worst_step"], "worst_attack": summary["worst_attack"],
        "worst_kind": named[summary["worst_attack"]]["kind"] if summary["worst_attack"] in named else None,
        "retain_at_worst": summary["retain_at_worst"],
        "by_kind": by_kind,
        "grid_readings": {
            "quantize4": reading(lambda a: a["kind"] == "quantize" and a["settings"].get("bits") == 4),
            "orthogonalize": reading(lambda a: a["kind"] == "orthogonalize"),
            "soft_prompt5": reading(lambda a: a["kind"] == "soft_prompt" and a["settings"].get("steps") == 5),
        },
        "attacks": [{"name": a["name"], "kind": a["kind"], "curve": a["curve"]} for a in attacks],
    }


def probe_best(probe: dict) -> dict:
    [target] = probe["targets"].values()
    best = {}
    for reader in ("probe", "logit_lens", "depth"):
        rows = target.get(reader)
        if rows:
            top = max(rows, key=lambda row: row[FORGET])
            best[reader] = {"best": top[FORGET], "layer": top["layer"]}
    return best


def measure(name: str, spec: dict, root: Path, time_readings: bool) -> dict:
    folder = root / name
    walls: dict[str, float] = {}
    for words in spec["make"]:
        done = Path(words[words.index("--output-dir") + 1] if "--output-dir" in words else
                    next(w.split("=", 1)[1] for w in words if w.startswith("output_dir=")))
        if not (done / "model").exists() or not (done / "run.json").exists():
            walls[words[0]] = run(words)
    baseline = spec.get("baseline")
    entries = DEMO_GRID + NEW_KINDS + ([BY_CHANGE] if spec["from_base"] else [])
    if name == "base":  # nothing unlearned: no direction to project out and no original to compare with
        entries = [e for e in entries if "orthogonalize" not in e]
    grid_folder = folder / "tamper"
    walls["grid"] = tamper(spec["target"], grid_folder, entries, baseline)
    result = summarise(json.loads((grid_folder / "tamper.json").read_text()))

    probe_folder = folder / "probe"
    probe_words = ["probe", spec["target"], "--tasks", FORGET, "--output-dir", str(probe_folder),
                   "eval.batch_size=64", "eval.max_length=256"]
    if spec.get("baseline"):
        probe_words[2:2] = ["--baseline", spec["baseline"]]
    if not (probe_folder / "probe.json").exists():
        walls["probe"] = run(probe_words)
    result["probe"] = probe_best(json.loads((probe_folder / "probe.json").read_text()))

    if time_readings:
        result["alone"] = {}
        for reading, entry in CHEAP.items():
            if reading == "orthogonalize" and name == "base":
                continue
            alone = folder / "alone" / reading
            walls[reading] = tamper(spec["target"], alone, [entry], baseline, few_shot=False)
            attacks = json.loads((alone / "tamper.json").read_text())["attacks"]
            result["alone"][reading] = [a["curve"][-1][FORGET] for a in attacks if a["kind"] != "few_shot"][-1]
    result.update(config=spec["config"], target=spec["target"], wall_s=walls)
    return result


READINGS = {
    "step0": lambda m: m["step0"][FORGET],
    "quantize4": lambda m: m["grid_readings"]["quantize4"],
    "orthogonalize": lambda m: m["grid_readings"]["orthogonalize"],
    "soft_prompt5": lambda m: m["grid_readings"]["soft_prompt5"],
    "probe": lambda m: m["probe"].get("probe", {}).get("best"),
    "logit_lens": lambda m: m["probe"].get("logit_lens", {}).get("best"),
    "depth": lambda m: m["probe"].get("depth", {}).get("best"),
}


def correlations(models: dict, leave_out: tuple = ()) -> dict:
    """Spearman's rho across the models between the full grid's worst case and each reading (models
    without the reading, and those named in leave_out, left out; n says how many are in)."""
    models = {name: m for name, m in models.items() if name not in leave_out}
    from scipy.stats import spearmanr

    out = {}
    for reading, read in READINGS.items():
        pairs = [(m["worst"], read(m)) for m in models.values() if read(m) is not None]
        rho, p = spearmanr([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) > 2 else (None, None)
        out[reading] = {"rho": None if rho != rho or rho is None else round(float(rho), 3),
                        "p": None if p != p or p is None else round(float(p), 4), "n": len(pairs),
                        "models": [name for name, m in models.items() if read(m) is not None]}
    return out


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="names of sources() to measure, in order")
    parser.add_argument("--root", type=Path, default=Path("runs/attack-kinds"))
    parser.add_argument("--time-readings", default="plain", help="comma-separated models whose cheap readings run alone, timed")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/attack-kinds-testbed.json"))
    args = parser.parse_args(arguments)

    specs = sources(args.root)
    previous = json.loads(args.output.read_text()) if args.output.exists() else {"models": {}}
    timed = set(args.time_readings.split(",")) if args.time_readings else set()
    for name in args.models:
        start = time.perf_counter()
        previous["models"][name] = measure(name, specs[name], args.root, name in timed)
        previous["models"][name]["wall_s"]["total"] = round(time.perf_counter() - start, 1)
        previous.update(
            commit=subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
            date=datetime.date.today().isoformat(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
            grid=DEMO_GRID + ["few_shot 0 and 5"] + NEW_KINDS + [BY_CHANGE + " (models made from testbed:base)"])
        previous["correlation"] = correlations(previous["models"])
        # base shows its knowledge untouched: without it, the question is which reading tells the
        # models that look removed at step 0 apart
        previous["correlation_without_base"] = correlations(previous["models"], ("base",))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(previous, indent=1) + "\n")
        print(f"{name}: worst {previous['models'][name]['worst']} by {previous['models'][name]['worst_attack']}",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
