"""Live tracking, read back through each library's own reader: wandb's offline run files
(`wandb leet inspect --json`), trackio's local database, TensorBoard's event files.

One tracked run's whole life is shared by the first tests: it fails in the middle of a phase
(after a step that its checkpoint does not hold), is resumed to completion, and is attacked with
`peel tamper`. Every tracker must show each step once, with the values metrics.jsonl holds, the
per-phase and final accuracies, the summary, and the attack's curve, in one tracked run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from peel.unlearning import engine
from peel.runs import resume, tracking
from peel import testbed
from peel.cli import main
from peel.config import Config, TrackConfig, load_config
from peel.unlearning.engine import unlearn
from peel.errors import PeelError, RunFailed
from peel.runs.folder import TRACKING_FILE

FIXTURES = Path(__file__).parent / "fixtures" / "evaluation"
PROJECT = "peel-tests"
TRAINING_KEYS = ("forget_loss", "retain_loss", "forget_coef", "retain_coef", "forget_grad_norm", "grad_norm", "lr", "layer")


def overrides(model: Path, corpora: dict, output_dir: Path, *extra: str) -> list[str]:
    return [
        f"model.name_or_path={model}", f"data.forget.path={corpora['forget']}", f"data.retain.path={corpora['retain']}",
        "data.num_examples=16", "data.max_length=16", "train.global_batch_size=8", "train.per_device_batch_size=4",
        "train.dtype=float32", "train.lr=1e-2", "unlearn.layers=[3, 1]", f"output_dir={output_dir}",
        f"track.project={PROJECT}", *extra,
    ]


def metrics(folder: Path) -> dict[int, dict]:
    return {record["step"]: record for record in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    """wandb offline; trackio's database, the baseline cache and the test tasks' questions in
    temporary places. trackio reads TRACKIO_DIR once, when it is first imported."""
    store = tmp_path_factory.mktemp("trackio")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.delenv("WANDB_DIR", raising=False)
        patch.setenv("TRACKIO_DIR", str(store))
        patch.setenv("PEEL_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setitem(testbed.MC_FILES, "testbed_forget", str(FIXTURES / "forget_mc.jsonl"))
        patch.setitem(testbed.MC_FILES, "testbed_retain", str(FIXTURES / "retain_mc.jsonl"))
        import trackio.utils

        assert trackio.utils.TRACKIO_DIR == store, "trackio was imported before TRACKIO_DIR was set"
        yield store


@pytest.fixture(scope="module")
def life(environment, tiny_models, corpora, tmp_path_factory):
    """A run tracked by all three, 8 steps (2 phases of 4), evaluated after each phase and at the
    end; it fails once in the middle, is resumed, and is attacked."""
    folder = tmp_path_factory.mktemp("tracked") / "life"
    arguments = overrides(
        tiny_models["gpt_neox"], corpora, folder, "train.epochs_per_layer=2", "train.checkpoint_every=3",
        "eval.tasks=[testbed_forget, testbed_retain]", "eval.every_phase=true", "eval.batch_size=4",
        "track.to=[wandb, trackio, tensorboard]",
    )
    config = load_config(None, arguments)
    # Checkpoints at step 3 (every 3) and 4 (the phase's end); the run fails while computing step 6,
    # after step 5 was written and tracked. The resumed run redoes step 5 from step 4's checkpoint.
    real = engine.compute_gradients
    calls = []

    def fails_in_step_6(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("a node went away")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "compute_gradients", fails_in_step_6)
        with pytest.raises(RunFailed, match="a node went away"):
            unlearn(config)
    assert sorted(metrics(folder)) == [1, 2, 3, 4, 5]
    unlearn(config)
    assert sorted(metrics(folder)) == list(range(1, 9))

    tamper = ["tamper.data.path=" + str(corpora["forget"]), "tamper.tasks=[testbed_forget]", "tamper.steps=4",
              "tamper.eval_every=2", "tamper.num_examples=8", "tamper.per_device_batch_size=4", "tamper.max_length=16",
              "tamper.lr=1e-3", "eval.batch_size=4", "tamper.grid=[]", "tamper.few_shot=[]"]  # one attack, named "attack"
    assert main(["tamper", str(folder), *tamper]) == 0
    return folder


def attack_curve(folder: Path) -> list[dict]:
    """The one attack's curve in the folder's tamper.json."""
    (attack,) = json.loads((folder / "tamper.json").read_text())["attacks"]
    return attack["curve"]


def identity(folder: Path, tracker: str) -> dict:
    return json.loads((folder / TRACKING_FILE).read_text())["trackers"][tracker]


def wandb_records(run_file: Path) -> list[dict]:
    """Every record of a .wandb transaction log, read by wandb's own inspector."""
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(run_file), "--json"],
                            capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def wandb_files(folder: Path) -> list[Path]:
    return sorted((folder / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda path: path.parent.name)


def test_wandb_holds_one_run_with_every_step_once(life):
    files = wandb_files(life)
    assert len(files) == 3  # the failed attempt, the resumed one, peel tamper
    attempts = [wandb_records(path) for path in files]
    runs = [next(r["run"] for r in records if r["type"] == "run") for records in attempts]
    assert {run["run_id"] for run in runs} == {identity(life, "wandb")["id"]}
    assert {run["display_name"] for run in runs} == {"life"} and not any(run.get("run_group") for run in runs)
    # The resolved config once, when the tracked run began.
    assert runs[0]["config"]["update"]["unlearn"]["layers"] == [3, 1]
    assert all("unlearn" not in run["config"]["update"] for run in runs[1:])

    history = [(r["history"]["item"], index) for index, records in enumerate(attempts) for r in records if r["type"] == "history"]
    training = [(item, index) for item, index in history if "forget_loss" in item]
    steps = [item["_step"] for item, _ in training]
    assert steps == list(range(1, 9))  # step 5, redone after the restart, is not logged twice
    assert [index for _, index in training] == [0] * 5 + [1] * 3
    written = metrics(life)
    for item, _ in training:
        for key in TRAINING_KEYS:
            assert item[key] == pytest.approx(written[item["_step"]][key], rel=1e-6), (item["_step"], key)
    phase_ends = {item["_step"]: item["eval/testbed_forget"] for item, _ in training if "eval/testbed_forget" in item}
    assert phase_ends == {4: written[4]["eval"]["testbed_forget"], 8: written[8]["eval"]["testbed_forget"]}

    summaries = [{k: v for r in records if r["type"] == "summary" for k, v in r["summary"]["update"].items()} for records in attempts]
    run_record = json.loads((life / "run.json").read_text())
    evaluation = json.loads((life / "eval.json").read_text())
    assert summaries[0]["run/status"] == "failed" and summaries[1]["run/status"] == "completed"
    assert summaries[1]["run/wall_seconds"] == run_record["wall_seconds"]
    assert summaries[1]["run/peak_memory_mb"] == run_record["peak_memory_mb"]
    assert summaries[1]["result/testbed_retain"] == evaluation["accuracy"]["testbed_retain"]
    assert summaries[1]["baseline/testbed_forget"] == evaluation["baseline"]["accuracy"]["testbed_forget"]
    exits = [next(r["exit"] for r in records if r["type"] == "exit") for records in attempts]
    assert [exit.get("exit_code", 0) for exit in exits] == [1, 0, 0]

    curve = attack_curve(life)
    attack = [item for item, index in history if index == 2 and "tamper/attack/testbed_forget" in item]
    assert [item["tamper/step"] for item in attack] == [row["step"] for row in curve] == [0, 2, 4]
    assert [item["tamper/attack/testbed_forget"] for item in attack] == [row["testbed_forget"] for row in curve]
    assert min(item["_step"] for item in attack) > 8  # after the run's steps: wandb's step never goes back


def test_trackio_holds_one_run_with_every_step_once(life):
    from trackio.sqlite_storage import SQLiteStorage

    runs = SQLiteStorage.get_run_records(PROJECT)
    started = identity(life, "trackio")
    assert [(run["id"], run["name"]) for run in runs if run["name"] == "life"] == [(started["id"], "life")]
    logs = SQLiteStorage.get_logs(PROJECT, "life", run_id=started["id"])
    written = metrics(life)
    training = [row for row in logs if "forget_loss" in row]
    assert [row["step"] for row in training] == list(range(1, 9))
    for row in training:
        for key in TRAINING_KEYS:
            assert row[key] == pytest.approx(written[row["step"]][key], rel=1e-6), (row["step"], key)
    assert {row["step"]: row["eval/testbed_retain"] for row in training if "eval/testbed_retain" in row} == {
        4: written[4]["eval"]["testbed_retain"], 8: written[8]["eval"]["testbed_retain"]}
    summaries = [row for row in logs if "run/status" in row]
    assert [(row["run/status"], row["step"]) for row in summaries] == [("failed", 5), ("completed", 8)]
    assert summaries[-1]["result/testbed_forget"] == json.loads((life / "eval.json").read_text())["accuracy"]["testbed_forget"]
    curve = attack_curve(life)
    attack = [(row["step"], row["tamper/attack/testbed_forget"]) for row in logs if "tamper/attack/testbed_forget" in row]
    assert attack == [(row["step"], row["testbed_forget"]) for row in curve]
    config = SQLiteStorage.get_run_config(PROJECT, "life", run_id=started["id"])
    assert config["unlearn"]["layers"] == [3, 1] and config["track"]["project"] == PROJECT


def test_tensorboard_holds_every_step_once(life):
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(life / "tensorboard"), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    events.Reload()
    written = metrics(life)
    for key in TRAINING_KEYS:
        scalars = events.Scalars(key)
        assert [event.step for event in scalars] == list(range(1, 9)), key
        assert [event.value for event in scalars] == pytest.approx([written[step][key] for step in range(1, 9)], rel=1e-6)
    phase_ends = events.Scalars("eval/testbed_forget")
    assert [e.step for e in phase_ends] == [4, 8]
    assert [e.value for e in phase_ends] == pytest.approx([written[step]["eval"]["testbed_forget"] for step in (4, 8)])
    statuses = [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors("run/status/text_summary")]
    assert statuses == [(5, "failed"), (8, "completed")]
    assert len(events.Tensors("config/text_summary")) == 1
    evaluation = json.loads((life / "eval.json").read_text())
    assert [e.value for e in events.Scalars("result/testbed_retain")] == pytest.approx([evaluation["accuracy"]["testbed_retain"]])
    curve = attack_curve(life)
    attack = events.Scalars("tamper/attack/testbed_forget")
    assert [e.step for e in attack] == [row["step"] for row in curve]
    assert [e.value for e in attack] == pytest.approx([row["testbed_forget"] for row in curve])


def test_a_tracker_that_fails_is_a_warning_and_the_run_goes_on(environment, tiny_models, corpora, tmp_path, capfd, monkeypatch):
    """trackio refuses the project name when it starts; TensorBoard's writes fail from the third
    step on; wandb is given every step all the same."""
    from torch.utils.tensorboard import SummaryWriter

    real = SummaryWriter.add_scalar
    calls = []

    def disk_full_at_step_3(self, tag, value, step=None, *args, **kwargs):
        if step == 3:
            calls.append(tag)
            raise OSError(28, "No space left on device")
        return real(self, tag, value, step, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full_at_step_3)
    folder = tmp_path / "run"
    unlearn(load_config(None, overrides(tiny_models["gpt_neox"], corpora, folder, "track.project=registry-peel",
                                        "track.to=[trackio, tensorboard, wandb]")))

    # wandb's console capture writes through to the terminal's file descriptor, hence capfd.
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("peel: warning:")]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("peel: warning: trackio tracking did not start (ValueError: Project name 'registry-peel'")
    assert warnings[1] == ("peel: warning: tensorboard tracking stopped (OSError: [Errno 28] No space left on device); "
                           "the run goes on without it")
    assert len(calls) == 1  # dropped at its first failure
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"
    assert set(json.loads((folder / TRACKING_FILE).read_text())["trackers"]) == {"tensorboard", "wandb"}
    (run_file,) = wandb_files(folder)
    history = [r["history"]["item"]["_step"] for r in wandb_records(run_file) if r["type"] == "history"]
    assert history == [1, 2, 3, 4]


@pytest.mark.parametrize("command", ["unlearn", "sweep", "tamper"])
def test_a_missing_tracker_package_is_one_line_naming_the_extra(tiny_models, corpora, tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without wandb gives on import
    config = tmp_path / "config.yaml"
    config.write_text("notes: tracked\n")
    arguments = overrides(tiny_models["gpt_neox"], corpora, tmp_path / "run", "track.to=[tensorboard, wandb]")
    argv = {
        "unlearn": ["unlearn", str(config), *arguments],
        "sweep": ["sweep", str(config), *arguments, "--grid", "unlearn.remove_coef=1,2", "--local"],
        "tamper": ["tamper", str(tiny_models["gpt_neox"]), "--output-dir", str(tmp_path / "run"), "track.to=[wandb]"],
    }[command]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"peel {command}: error: track.to lists wandb, but it cannot be imported")
    assert lines[0].endswith("accepted: install it with pip install 'peel[wandb]', or leave wandb out of track.to")
    assert not (tmp_path / "run").exists()


def test_sweep_runs_group_under_the_sweep_folder(environment, tiny_models, corpora, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("notes: a tracked sweep\n")
    arguments = overrides(tiny_models["gpt_neox"], corpora, tmp_path / "coefficients", "track.to=[wandb]", "unlearn.layers=[3]")
    assert main(["sweep", str(config), *arguments, "--grid", "unlearn.remove_coef=1,2", "--local"]) == 0
    for name in ("remove_coef=1", "remove_coef=2"):
        (run_file,) = wandb_files(tmp_path / "coefficients" / name)
        run = next(r["run"] for r in wandb_records(run_file) if r["type"] == "run")
        assert (run["display_name"], run["run_group"]) == (name, "coefficients")


def test_a_restart_after_a_kill_skips_the_steps_the_trackers_were_given(environment, tmp_path):
    """A killed run never finishes its trackers: tracking.json still holds the step it started at,
    metrics.jsonl (before the rewind) the last step the trackers were given."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / TRACKING_FILE).write_text(json.dumps({"trackers": {"tensorboard": {"logdir": "tensorboard"}}, "last_step": 2}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": step}) + "\n" for step in range(1, 6)) + '{"step": 6, "lo')
    settings = TrackConfig(to=["tensorboard"])
    continued = tracking.start(settings, {}, folder, continuing=True)
    assert continued.logged_through == 5
    continued.log({"step": 5, "forget_loss": 1.0})  # redone after the restart: not given again
    continued.log({"step": 6, "forget_loss": 2.0})
    continued.finish()
    assert json.loads((folder / TRACKING_FILE).read_text())["last_step"] == 6

    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("forget_loss")] == [(6, 2.0)]
    # Started over (--force, or a first start): new tracked runs, the old events gone.
    before = set((folder / "tensorboard").glob("events.*"))
    fresh = tracking.start(settings, {}, folder, continuing=False)
    fresh.finish()
    assert fresh.logged_through == 0 and not before & set((folder / "tensorboard").glob("events.*"))


def test_tracking_settings_do_not_split_or_block_runs():
    names = typing.get_args(typing.get_args(typing.get_type_hints(TrackConfig)["to"])[0])
    assert set(names) == set(tracking.TRACKERS)  # the config's choices are the table's names
    with pytest.raises(PeelError, match="accepted: wandb, trackio, tensorboard"):
        load_config(None, ["track.to=[neptune]"])
    saved, given = Config(), load_config(None, ["track.to=[wandb]", "track.name=other"])
    assert resume.config_differences(saved, given) == []  # a run resumes under new tracking settings
    assert resume.config_differences(saved, load_config(None, ["train.lr=1"])) != []
