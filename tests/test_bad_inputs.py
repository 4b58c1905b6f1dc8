"""Inputs people really get wrong, across every command: each is one line on stderr naming what
was wrong, exit status 2, no traceback, and nothing left behind.

The cases run through `peel.cli.main` in this process (one import of torch for all of them); one
case per command also runs as a real subprocess, for the exit status a shell sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from peel.cli import main

REPOSITORY = Path(__file__).resolve().parents[1]


@dataclass
class Workspace:
    root: Path  # everything the cases may write into lives under here
    model: Path  # a tiny llama folder
    neox: Path  # a tiny GPT-NeoX folder
    forget: Path
    retain: Path
    config: Path  # a small, valid unlearning config on the tiny model
    runs: Path  # run folders for report
    unwritable: Path  # a folder no process can write into


def unwritable_folder(root: Path) -> Path:
    """A folder this process cannot write into, even as root (for whom permissions do not count)."""
    if os.geteuid() != 0:
        folder = root / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    return Path("/sys")  # sysfs: root cannot create files there either


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_models, corpora) -> Workspace:
    root = tmp_path_factory.mktemp("bad_inputs")
    config = root / "config.yaml"
    config.write_text(
        "\n".join([
            f"model: {{name_or_path: {tiny_models['llama']}}}",
            f"data: {{forget: {{path: {corpora['forget']}}}, retain: {{path: {corpora['retain']}}}, num_examples: 16, max_length: 16}}",
            "unlearn: {layers: [3, 1]}",
            "train: {global_batch_size: 8, per_device_batch_size: 4, dtype: float32}",
            f"output_dir: {root / 'run'}",
        ]) + "\n"
    )
    runs = root / "runs"
    import shutil

    shutil.copytree(REPOSITORY / "tests" / "fixtures" / "report" / "runs" / "l2_rm10", runs / "good")
    return Workspace(root, tiny_models["llama"], tiny_models["gpt_neox"], corpora["forget"], corpora["retain"], config, runs,
                     unwritable_folder(root))


def write(workspace: Workspace, name: str, content: str | bytes) -> Path:
    path = workspace.root / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def bad_model_folder(workspace: Workspace, name: str, weights: bytes | None, tokenizer: bool,
                     source: Path | None = None) -> Path:
    """A copy of the tiny model (or `source`) with broken weights and/or no tokenizer files."""
    import shutil

    folder = workspace.root / "inputs" / name
    if not folder.exists():
        shutil.copytree(source or workspace.model, folder)
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights)
        if not tokenizer:
            for file in folder.glob("tokenizer*"):
                file.unlink()
    return folder


def run_copy(workspace: Workspace, name: str, change: Callable[[Path], None]) -> Path:
    import shutil

    folder = workspace.root / "inputs" / name
    if not folder.exists():
        shutil.copytree(workspace.runs / "good", folder)
        change(folder)
    return folder


def unlearn(workspace: Workspace, *overrides: str) -> list[str]:
    return ["unlearn", str(workspace.config), *overrides]


def tamper(workspace: Workspace, target: str, *more: str) -> list[str]:
    """peel tamper on the testbed's attack text and tasks, so nothing needs the hub."""
    return ["tamper", target, "--output-dir", str(workspace.root / "t"), "tamper.data.path=testbed:tamper",
            "tamper.tasks=[testbed_forget]", *more]


def data(workspace: Workspace, name: str, content: str | bytes) -> list[str]:
    return unlearn(workspace, f"data.forget.path={write(workspace, name, content)}")


def corrupt_parquet(workspace: Workspace) -> bytes:
    return b"PAR1" + os.urandom(64) + b"PAR1"


# (id, argv built from the workspace, text the one error line must contain)
CASES: list[tuple[str, Callable[[Workspace], list[str]], str]] = [
    # unlearn: config values, checked before anything loads
    ("negative lr", lambda w: unlearn(w, "train.lr=-1"), "'train.lr' got -1.0"),
    ("infinite lr", lambda w: unlearn(w, "train.lr=.inf"), "'train.lr' got inf"),
    ("nan lr as text", lambda w: unlearn(w, "train.lr=nan"), "'train.lr' got nan"),
    ("nan coefficient", lambda w: unlearn(w, "unlearn.remove_coef=.nan"), "'unlearn.remove_coef' got nan"),
    ("negative retain coefficient", lambda w: unlearn(w, "unlearn.retain_coef=-5"), "'unlearn.retain_coef' got -5.0"),
    ("lora rank 0", lambda w: unlearn(w, "unlearn.lora.rank=0"), "'unlearn.lora.rank' got 0"),
    ("lora dropout 1", lambda w: unlearn(w, "unlearn.lora.dropout=1"), "'unlearn.lora.dropout' got 1.0"),
    ("batch size 0", lambda w: unlearn(w, "train.per_device_batch_size=0"), "'train.per_device_batch_size' got 0"),
    ("max length 0", lambda w: unlearn(w, "data.max_length=0"), "'data.max_length' got 0"),
    ("warmup above 1", lambda w: unlearn(w, "train.warmup_ratio=1.5"), "'train.warmup_ratio' got 1.5"),
    ("chat fraction above 1", lambda w: unlearn(w, "data.chat.fraction=2"), "'data.chat.fraction' got 2.0"),
    ("layer step 0", lambda w: unlearn(w, "unlearn.layers.step=0"), "'unlearn.layers.step' got 0"),
    ("negative layer", lambda w: unlearn(w, "unlearn.layers=[3, -1]"), "'unlearn.layers[1]' got -1"),
    ("layer past the model", lambda w: unlearn(w, "unlearn.layers=[9]"), "layer 9; the model has layers 0..3"),
    ("retain layer past the model", lambda w: unlearn(w, "unlearn.retain_layers=[7]"), "retain_layers contains layer 7"),
    ("rank as a word", lambda w: unlearn(w, "unlearn.lora.rank=two"), "'unlearn.lora.rank' got 'two'; accepted: an integer"),
    ("unknown dtype", lambda w: unlearn(w, "train.dtype=float8"), "'train.dtype' got 'float8'"),
    ("unknown key", lambda w: unlearn(w, "train.learning_rate=1"), "unknown config key 'train.learning_rate'"),
    ("batch not a multiple", lambda w: unlearn(w, "train.global_batch_size=6"), "global_batch_size=6 is not a multiple"),
    ("more examples than the corpus", lambda w: unlearn(w, "data.num_examples=5000"), "5000 are asked for"),
    ("unknown eval task", lambda w: unlearn(w, "eval.tasks=[testbed_forgett]"), "unknown evaluation task 'testbed_forgett'"),
    # the resistance methods (unlearn.adversary=sam, unlearn.collapse_components)
    ("negative sam radius", lambda w: unlearn(w, "unlearn.adversary=sam", "unlearn.sam_rho=-0.1"), "'unlearn.sam_rho' got -0.1"),
    ("nan sam radius", lambda w: unlearn(w, "unlearn.adversary=sam", "unlearn.sam_rho=nan"), "'unlearn.sam_rho' got nan"),
    ("negative collapse components", lambda w: unlearn(w, "unlearn.collapse_components=-1"), "'unlearn.collapse_components' got -1"),
    ("collapse components above the hidden size", lambda w: unlearn(w, "unlearn.collapse_components=33"),
     "unlearn.collapse_components=33 is larger than the model's hidden size (32); accepted: 0..32"),
    # unlearn: config files
    ("missing config", lambda w: ["unlearn", str(w.root / "nope.yaml")], "nope.yaml' does not exist"),
    ("config not YAML", lambda w: ["unlearn", str(write(w, "broken.yaml", "train: {lr: [\n"))], "broken.yaml"),
    ("config of binary bytes", lambda w: ["unlearn", str(write(w, "binary.yaml", b"\xff\xfe\x00\x81"))], "binary.yaml"),
    ("config holding a list", lambda w: ["unlearn", str(write(w, "list.yaml", "- a\n- b\n"))], "must hold a mapping"),
    ("config indented with a tab", lambda w: ["unlearn", str(write(w, "tab.yaml", "train:\n\tlr: 1\n"))],
     "tab.yaml' is not valid YAML at line 2, column 1: found character '\\t' that cannot start any token (YAML indents with spaces"),
    ("keyword list missing beside the config", lambda w: ["unlearn", str(write(w, "keywords_config.yaml", f"base: {w.config}\ndata: {{forget: {{keywords: no_such_list.txt}}}}\n"))],
     "inputs/no_such_list.txt"),
    ("config that is a weights file", lambda w: ["unlearn", str(w.model / "model.safetensors")],
     "model.safetensors' looks like model weights; accepted: a peel config"),
    ("config that is a data file", lambda w: ["unlearn", str(w.forget)], "forget.jsonl' looks like a JSON Lines data file"),
    ("config that is a model's config.json", lambda w: ["unlearn", str(w.model / "config.json")],
     "config.json' looks like a model's config.json (keys architectures"),
    ("config path is a folder", lambda w: ["unlearn", str(w.runs)], "runs' is a folder; accepted: a YAML config file"),
    # unlearn: data files
    ("empty forget file", lambda w: data(w, "empty.jsonl", ""), "empty.jsonl' is empty"),
    ("file of blank lines", lambda w: data(w, "blank.txt", "\n   \n\n\t\n"), "holds no usable texts"),
    ("jsonl with a broken line", lambda w: data(w, "broken.jsonl", '{"text": "a virus"}\n{"text": "bats\n'), "broken.jsonl"),
    ("text column of numbers", lambda w: data(w, "numbers.jsonl", '{"text": 1}\n{"text": 2}\n'), "2 of another type"),
    ("corrupt parquet", lambda w: data(w, "corrupt.parquet", corrupt_parquet(w)), "corrupt.parquet"),
    ("missing data file", lambda w: unlearn(w, "data.retain.path=/nonexistent/retain.jsonl"), "'/nonexistent/retain.jsonl' does not exist"),
    ("missing column", lambda w: unlearn(w, "data.forget.text_field=body"), "has no column 'body'"),
    ("unknown testbed name", lambda w: unlearn(w, "data.forget.path=testbed:pathogens"), "unknown testbed name 'testbed:pathogens'"),
    # unlearn: models
    ("missing model", lambda w: unlearn(w, "model.name_or_path=/nonexistent/model"), "'/nonexistent/model'"),
    ("misspelt model folder", lambda w: unlearn(w, f"model.name_or_path={w.model.parent / (w.model.name + 'x')}"),
     "does not exist (did you mean "),
    ("missing relative model folder", lambda w: unlearn(w, "model.name_or_path=./mymodl"), "mymodl' does not exist; read as a local path"),
    ("corrupt weights", lambda w: unlearn(w, f"model.name_or_path={bad_model_folder(w, 'corrupt_model', b'not safetensors', True)}"), "corrupt_model"),
    ("no tokenizer", lambda w: unlearn(w, f"model.name_or_path={bad_model_folder(w, 'no_tokenizer', None, False)}"), "no_tokenizer"),
    # GPT-NeoX without tokenizer files: transformers builds an empty two-token tokenizer, which once
    # passed and made the data look empty ("256 texts tokenize to no tokens")
    ("empty tokenizer", lambda w: unlearn(w, f"model.name_or_path={bad_model_folder(w, 'neox_no_tokenizer', None, False, w.neox)}"),
     "neox_no_tokenizer' cannot read plain text"),
    ("model path at the weights file", lambda w: unlearn(w, f"model.name_or_path={w.model / 'model.safetensors'}"),
     "model.safetensors' is a file, not a model folder"),
    ("model path at a jsonl file", lambda w: unlearn(w, f"model.name_or_path={w.forget}"), "forget.jsonl' is a file, not a model folder"),
    ("model folder without config.json", lambda w: unlearn(w, f"model.name_or_path={w.runs}"), "has no config.json"),
    # unlearn: output folders
    ("output_dir is a file", lambda w: unlearn(w, f"output_dir={write(w, 'a_file', 'x')}"), "a_file' is an existing file"),
    ("output_dir under a file", lambda w: unlearn(w, f"output_dir={write(w, 'parent_file', 'x') / 'run'}"), "parent_file' is a file"),
    ("output_dir unwritable", lambda w: unlearn(w, f"output_dir={w.unwritable / 'run'}"), "is not writable"),
    # eval
    ("eval of a missing target", lambda w: ["eval", "/nonexistent/model", "--tasks", "testbed_forget", "--output-dir", str(w.root / "e")], "'/nonexistent/model'"),
    ("eval without tasks", lambda w: ["eval", str(w.model), "--output-dir", str(w.root / "e")], "no tasks to evaluate"),
    ("eval into a file", lambda w: ["eval", str(w.model), "--tasks", "testbed_forget", "--output-dir", str(write(w, "eval_file", "x"))], "eval_file' is an existing file"),
    ("eval limit 0", lambda w: ["eval", str(w.model), "--tasks", "testbed_forget", "--output-dir", str(w.root / "e"), "eval.limit=0"], "'eval.limit' got 0"),
    ("eval of a model without tokenizer files", lambda w: ["eval", str(bad_model_folder(w, 'neox_no_tokenizer', None, False, w.neox)), "--tasks", "testbed_forget", "--output-dir", str(w.root / "e")], "cannot read plain text"),
    ("eval of a weights file", lambda w: ["eval", str(w.model / "model.safetensors"), "--tasks", "testbed_forget", "--output-dir", str(w.root / "e")], "is a file, not a model folder"),
    ("eval unknown task", lambda w: ["eval", str(w.model), "--tasks", "no_such_task", "--output-dir", str(w.root / "e")], "unknown evaluation task 'no_such_task'"),
    ("eval include_path missing", lambda w: ["eval", str(w.model), "--tasks", "testbed_forget", "--output-dir", str(w.root / "e"), f"eval.include_path={w.root / 'no_tasks'}"], "no_tasks' is not a folder; accepted: a folder of lm-eval task YAML files"),
    # tamper
    ("tamper negative steps", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.steps=-1"], "'tamper.steps' got -1"),
    ("tamper eval_every 0", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.eval_every=0"], "'tamper.eval_every' got 0"),
    ("tamper nan lr", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.lr=nan"], "'tamper.lr' got nan"),
    ("tamper into an unwritable folder", lambda w: ["tamper", str(w.model), "--output-dir", str(w.unwritable / "t")], "is not writable"),
    ("tamper more examples than the corpus", lambda w: ["tamper", "testbed:base", "--output-dir", str(w.root / "t"), "tamper.data.path=testbed:tamper", "tamper.tasks=[testbed_forget]", "tamper.num_examples=5000"], "holds 300 usable texts"),
    ("tamper dry run of a bad attack value", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "--dry-run", "tamper.lr=nan"], "'tamper.lr' got nan"),
    ("tamper dry run of a missing attack file", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "--dry-run", "tamper.tasks=[testbed_forget]", "tamper.data.path=/nonexistent/attack.jsonl"], "'/nonexistent/attack.jsonl' does not exist"),
    ("tamper of a kind's option as a section key", lambda w: tamper(w, str(w.model), "tamper.bits=4"),
     "tamper.bits=4: bits is an option of the attack kind quantize, set per attack; accepted: --grid tamper.kind=quantize"),
    ("tamper without an output folder", lambda w: ["tamper", str(w.model)], "needs --output-dir"),
    ("tamper unknown option of a kind", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.grid=[{kind: soft_prompt, adapter: lora}]"], "unknown config key 'tamper.grid[0].adapter' for kind soft_prompt"),
    ("tamper soft prompt of 0 tokens", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.grid=[{kind: soft_prompt, tokens: 0}]"], "'tamper.grid[0].tokens' got 0"),
    ("tamper sparsity 1.5", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "--grid", "tamper.kind=prune", "--grid", "tamper.sparsity=1.5"], "'tamper.sparsity' got 1.5; accepted: a number in [0, 1)"),
    ("tamper sparsity nan", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.grid=[{kind: prune, sparsity: .nan}]"], "'tamper.grid[0].sparsity' got nan"),
    ("tamper negative latent epsilon", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.grid=[{kind: latent, epsilon: -0.1}]"], "'tamper.grid[0].epsilon' got -0.1"),
    ("tamper prompt template without a question slot", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.grid=[{kind: prompt, template: 'Answer this.'}]"], "prompt template 'Answer this.' has no {question} slot"),
    ("tamper eval step after the last", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.grid=[{steps: 20, eval_steps: [10, 40]}]"], "tamper.eval_steps has step 40, after the attack's last (tamper.steps=20)"),
    ("tamper prune by change without an original", lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.grid=[{kind: prune, by: change}]"], "attack 'kind=prune,by=change' needs the original model"),
    # tamper: everything the run would refuse is refused before attacks/grid.json is written or weights load,
    # and the dry run refuses it too
    ("tamper of a missing target", lambda w: tamper(w, str(w.root / "no_model")), "target '"),
    ("tamper of a misspelt run folder", lambda w: tamper(w, str(w.runs / "goood")), "does not exist (did you mean "),
    ("tamper dry run of a missing target", lambda w: tamper(w, str(w.root / "no_model"), "--dry-run"), "no_model' does not exist"),
    ("tamper of corrupt weights", lambda w: tamper(w, str(bad_model_folder(w, 'corrupt_model', b'not safetensors', True))),
     "cannot read the weights of model"),
    ("tamper of an unknown task", lambda w: tamper(w, str(w.model), "tamper.tasks=[testbed_forgett]"), "unknown evaluation task 'testbed_forgett'"),
    ("tamper dry run of an unknown task", lambda w: tamper(w, str(w.model), "--dry-run", "tamper.tasks=[testbed_forgett]"),
     "unknown evaluation task 'testbed_forgett'"),
    ("tamper dry run of a missing baseline", lambda w: tamper(w, str(w.model), "--dry-run", "--baseline", str(w.root / "no_base")),
     "--baseline: model folder '"),
    ("tamper include_path that is a file", lambda w: tamper(w, str(w.model), f"eval.include_path={w.forget}"), "is not a folder"),
    ("tamper include_path with a broken task file", lambda w: tamper(w, str(w.model), "eval.include_path=" + str(write(w, "tasks/broken.yaml", "task: mine\ndataset_path: [\n").parent)),
     "broken.yaml' in eval.include_path is not valid YAML at line 3"),
    # probe
    ("probe layer past the model", lambda w: ["probe", str(w.model), "--tasks", "testbed_forget", "--output-dir", str(w.root / "p"), "probe.layers=[1, 9]"], "probe.layers contains layer 9; the model has layers 0..3"),
    ("probe negative layer", lambda w: ["probe", str(w.model), "--tasks", "testbed_forget", "--output-dir", str(w.root / "p"), "probe.layers=[-1]"], "'probe.layers[0]' got -1"),
    ("probe without tasks", lambda w: ["probe", str(w.model), "--output-dir", str(w.root / "p")], "no tasks to probe"),
    ("probe with an empty task list", lambda w: ["probe", str(w.model), "--tasks", "", "--output-dir", str(w.root / "p")], "--tasks '' names no task"),
    ("probe unknown task", lambda w: ["probe", str(w.model), "--tasks", "testbed_forget,no_such_task", "--output-dir", str(w.root / "p")], "unknown evaluation task 'no_such_task'"),
    ("probe train share 1", lambda w: ["probe", str(w.model), "--tasks", "testbed_forget", "--output-dir", str(w.root / "p"), "probe.train_share=1"], "'probe.train_share' got 1.0"),
    ("probe unknown pooling", lambda w: ["probe", str(w.model), "--tasks", "testbed_forget", "--output-dir", str(w.root / "p"), "probe.pooling=max"], "'probe.pooling' got 'max'; accepted: last, mean"),
    ("probe of several targets without an output folder", lambda w: ["probe", str(w.model), "testbed:base", "--tasks", "testbed_forget"], "needs --output-dir"),
    # report
    ("report of a non-run folder", lambda w: ["report", str(write(w, "plain_folder/readme.txt", "x").parent), "--output", str(w.root / "r.md")], "plain_folder' is not a run folder (no config.yaml)"),
    ("report of a corrupt run.json", lambda w: ["report", str(run_copy(w, "bad_run_json", lambda f: (f / "run.json").write_text("{"))), "--output", str(w.root / "r.md")], "run.json is not valid JSON"),
    ("report of a corrupt metrics line", lambda w: ["report", str(run_copy(w, "bad_metrics", lambda f: (f / "metrics.jsonl").write_text('{"step": 1}\n{"ste'))), "--output", str(w.root / "r.md")], "metrics.jsonl:2"),
    ("report of a corrupt tamper.json", lambda w: ["report", str(run_copy(w, "bad_tamper", lambda f: (f / "tamper.json").write_text("[1, 2"))), "--output", str(w.root / "r.md")], "tamper.json is not valid JSON"),
    ("report of a binary config.yaml", lambda w: ["report", str(run_copy(w, "bad_config", lambda f: (f / "config.yaml").write_bytes(b"\xff\x00\xfe"))), "--output", str(w.root / "r.md")], "config.yaml"),
    ("report of a stray file alone", lambda w: ["report", str(write(w, "notes.txt", "x")), "--output", str(w.root / "r.md")], "nothing to report: "),
    ("report of a missing folder", lambda w: ["report", str(w.root / "no_such_run"), "--output", str(w.root / "r.md")], "no_such_run' does not exist"),
    ("report of a corrupt sweep.json", lambda w: ["report", str(write(w, "report_sweep/sweep.json", "{").parent), "--output", str(w.root / "r.md")], "sweep.json is not valid JSON"),
    ("report into an unwritable folder", lambda w: ["report", str(w.runs / "good"), "--output", str(w.unwritable / "r.md")], "is not writable"),
    ("report into a folder", lambda w: ["report", str(w.runs / "good"), "--output", str(w.runs)], "is a folder"),
    # sweep
    ("sweep grid without values", lambda w: ["sweep", str(w.config), "--grid", "train.lr", "--local"], "--grid 'train.lr'"),
    ("sweep grid with a bad value", lambda w: ["sweep", str(w.config), "--grid", "train.lr=1e-3,-1", "--local"], "'train.lr' got -1.0"),
    ("sweep into a file", lambda w: ["sweep", str(w.config), f"output_dir={write(w, 'sweep_file', 'x')}", "--grid", "train.lr=1e-3,2e-3", "--local"], "sweep_file' is an existing file"),
    ("sweep dry run of a run that cannot start", lambda w: ["sweep", str(w.config), "--grid", "data.forget.text_field=text,body", "--dry-run"], "has no column 'body'"),
    ("sweep status of a non-sweep", lambda w: ["sweep", "--status", str(w.runs)], "is not a sweep folder"),
    ("sweep status of a corrupt sweep.json", lambda w: ["sweep", "--status", str(write(w, "sweep.json", "{").parent)], "sweep.json is not valid JSON"),
    ("sweep bad slurm key", lambda w: ["sweep", str(w.config), "--grid", "train.lr=1e-3,2e-3", "--slurm", "gpus=4"], "--slurm 'gpus=4'"),
    # demo
    ("demo into an unwritable folder", lambda w: ["demo", "--output-dir", str(w.unwritable / "demo")], "is not writable"),
    ("demo into a file", lambda w: ["demo", "--output-dir", str(write(w, "demo_file", "x"))], "demo_file' is an existing file"),
    ("demo with a missing config", lambda w: ["demo", "--output-dir", str(w.root / "d"), "--config", str(w.root / "none.yaml")], "none.yaml"),
    ("demo with a bad override", lambda w: ["demo", "--output-dir", str(w.root / "d"), "train.lr=-1"], "'train.lr' got -1.0"),
    # testbed
    ("testbed build into a file", lambda w: ["testbed", "build", "--output-dir", str(write(w, "testbed_file", "x"))], "testbed_file' is an existing file"),
    ("testbed build with 0 steps", lambda w: ["testbed", "build", "--output-dir", str(w.root / "tb"), "--steps", "0"], "--steps got 0"),
    # elements
    ("elements build into a file", lambda w: ["elements", "build", "--output-dir", str(write(w, "elements_file", "x"))], "elements_file' is an existing file"),
    ("elements build of a missing model", lambda w: ["elements", "build", "--output-dir", str(w.root / "el"), "--model", "/nonexistent/m"], "'/nonexistent/m'"),
    # distill: RUN must be a completed unlearning run (the distillation's own values: tests/test_distill.py)
    ("distill of a folder that is no run", lambda w: ["distill", str(w.root / "no_run")], "is not a run folder (no config.yaml)"),
    ("distill of a run without a model", lambda w: ["distill", str(w.runs / "good"), "--output-dir", str(w.root / "d")],
     "holds no completed run"),
    ("distill without a run", lambda w: ["distill"], "the following arguments are required: RUN (see"),
    # the command line itself
    ("unknown option", lambda w: ["unlearn", str(w.config), "--no-such-flag"], "--no-such-flag"),
    ("override without a value", lambda w: unlearn(w, "train.lr"), "override 'train.lr' is not of the form dotted.key=value"),
]


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize("argv_of, fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(workspace, capsys, argv_of, fragment):
    argv = argv_of(workspace)  # builds the case's input files first
    before = tree(workspace.root)
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, stderr
    assert len(lines) == 1 and ": error: " in lines[0], stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in stderr
    assert tree(workspace.root) == before, "the failed command left files behind"


def test_the_suite_covers_every_command(workspace):
    from peel.cli import COMMANDS

    assert len(CASES) >= 40
    assert {argv_of(workspace)[0] for _, argv_of, _ in CASES} == set(COMMANDS)


@pytest.mark.parametrize("argv_of", [
    lambda w: unlearn(w, "unlearn.remove_coef=.nan"),
    lambda w: ["tamper", str(w.model), "--output-dir", str(w.root / "t"), "tamper.eval_every=0"],
    lambda w: ["report", str(w.runs / "good"), "--output", str(w.unwritable / "r.md")],
], ids=["unlearn", "tamper", "report"])
def test_a_shell_sees_exit_status_2_and_one_line(workspace, argv_of):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    completed = subprocess.run([sys.executable, "-m", "peel", *argv_of(workspace)], capture_output=True, text=True,
                               env=environment)  # no time limit: a busy machine is slow, not wrong
    assert completed.returncode == 2, completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1 and "Traceback" not in completed.stderr


def test_an_unexpected_error_is_one_line_naming_the_traceback_file(monkeypatch, capsys, tmp_path):
    from peel.commands import report

    def broken(args):
        raise ZeroDivisionError("division by zero deep inside")

    monkeypatch.setattr(report, "run", broken)
    status = main(["report", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(lines) == 1
    assert "internal error: ZeroDivisionError: division by zero deep inside; full traceback in " in lines[0]
    log = Path(lines[0].rsplit(" ", 1)[1])
    assert "Traceback" in log.read_text() and "broken" in log.read_text()
    log.unlink()


def test_default_tamper_examples_fit_the_shipped_corpus(tmp_path, capsys):
    """`peel tamper testbed:base tamper.data.path=testbed:tamper` once failed: 512 examples asked
    of a 300-text corpus. The default now reads what the attack uses, taking what there is."""
    status = main(["tamper", "testbed:base", "--output-dir", str(tmp_path), "tamper.data.path=testbed:tamper",
                   "tamper.tasks=[testbed_forget]", "tamper.grid=[]", "tamper.few_shot=[0]", "tamper.steps=10", "tamper.per_device_batch_size=32",
                   "tamper.max_length=16", "tamper.eval_every=10", "eval.limit=8"])
    output = capsys.readouterr()
    assert status == 0, output.err
    assert "holds 300 usable texts in column 'text'; using all of them (320 wanted)" in output.out
    assert json.loads((tmp_path / "tamper.json").read_text())


# --------------------------------------------------------------------------------------------
# Random values at every config field


def config_keys() -> list[str]:
    from peel.config import Config, flatten, to_dict

    return sorted(flatten(to_dict(Config())))


def yaml_text(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


def values():
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12), st.sampled_from(["all", "target", "lora", "full", "nan", "-inf", "1e-3", "[]", "{}"]),
    )
    return st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=6), scalars, max_size=2))


def test_random_values_at_every_config_field_are_accepted_or_one_line(workspace, capsys):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    before = tree(workspace.root)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(key=st.sampled_from(config_keys()), value=values())
    def check(key, value):
        override = f"{key}={yaml_text(value)}"
        capsys.readouterr()
        try:
            status = main(["unlearn", str(workspace.config), override, "--dry-run"])
        except SystemExit as exit:
            status = exit.code
        stderr = capsys.readouterr().err
        lines = [line for line in stderr.splitlines() if line.strip() and "it/s]" not in line]
        assert status in (0, 2), (override, stderr)
        if status == 2:
            assert len(lines) == 1 and ": error: " in lines[0], (override, stderr)
        assert "Traceback" not in stderr, override
        assert tree(workspace.root) == before, f"{override} left files behind"

    check()
