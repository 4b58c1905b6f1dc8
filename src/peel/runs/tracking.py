"""Live experiment tracking: a run's records, as they are written, in wandb, trackio or TensorBoard.

`track.to` names the trackers; TRACKERS maps each name to an adapter class that speaks its
library's API. No tracker library is imported until a run asks for it, and none is a dependency
of peel: each comes with an extra (pip install 'peel[wandb]').

What a tracker is given, and when:
    start    the resolved config, once per tracked run
    log      each metrics.jsonl record as the engine writes it (per-phase accuracy as eval/TASK)
    curve    each tamper attack's accuracy curve (peel tamper), as tamper/NAME/TASK
    finish   run.json's status, wall time and peak memory (run/...) and eval.json's accuracies
             (result/TASK, baseline/TASK) as the run's summary

Only the main process tracks. The identities of the tracked runs are kept in the run folder's
tracking.json, so a resumed run, or a later peel tamper, continues the same tracked runs. A resumed
run redoes the steps after its checkpoint; those a tracker was given before the restart are not
given again (a tracked step never appears twice). A tracker that fails, when it starts or later,
is one line on stderr and the run goes on without it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from peel.runs import folder as run_folder
from peel.config import TrackConfig, flatten
from peel.errors import PeelError, first_line
from peel.runs.evaluations import read_evaluation
from peel.runs.folder import METRICS_FILE, TENSORBOARD_FOLDER, TRACKING_FILE



class WandbTracker:
    """Weights & Biases. wandb's own settings apply (WANDB_MODE=offline, WANDB_DIR, the login);
    without WANDB_DIR its files go into the run folder's wandb/."""

    module = "wandb"

    def __init__(self, settings: TrackConfig, folder: Path, saved: dict | None, config: dict):
        import wandb

        self.run = wandb.init(
            project=settings.project, name=settings.name, group=settings.group, config=None if saved else config,
            id=saved["id"] if saved else None, resume="allow" if saved else None,
            dir=None if os.environ.get("WANDB_DIR") else folder,
        )
        # A wandb run has one step axis that never goes back: tamper curves take steps after the
        # run's last one and are plotted against their own attack step.
        self.run.define_metric("tamper/step")
        self.run.define_metric("tamper/*", step_metric="tamper/step")
        self.identity = {"id": self.run.id}

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def curve(self, name: str, rows: list[dict], first_step: int) -> None:
        for offset, row in enumerate(rows):
            values = {f"tamper/{name}/{key}": value for key, value in row.items() if key != "step"}
            self.run.log({"tamper/step": row["step"], **values}, step=first_step + offset)

    def summary(self, values: dict, step: int) -> None:
        self.run.summary.update(values)

    def finish(self, status: str | None) -> None:
        if status == "preempted":
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status in (None, "completed") else 1)


class TrackioTracker:
    """trackio, in its local database (TRACKIO_DIR, by default under HF_HOME) unless
    TRACKIO_SPACE_ID or TRACKIO_SERVER_URL sends it elsewhere. trackio continues a run by name,
    and keeps the config the latest start gave (so a continued run is given it again)."""

    module = "trackio"

    def __init__(self, settings: TrackConfig, folder: Path, saved: dict | None, config: dict):
        import trackio

        self.trackio = trackio
        name = saved["name"] if saved else settings.name
        self.run = trackio.init(
            project=settings.project, name=name, group=settings.group, config=config, resume="allow" if saved else "never"
        )
        if saved and self.run.id != saved["id"]:
            warn(f"trackio continued the latest run named {name!r} in project {settings.project!r}, "
                 f"not the one this folder started (id {saved['id']})")
        self.identity = {"id": self.run.id, "name": self.run.name}

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def curve(self, name: str, rows: list[dict], first_step: int) -> None:
        for row in rows:
            self.run.log({f"tamper/{name}/{key}": value for key, value in row.items() if key != "step"}, step=row["step"])

    def summary(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def finish(self, status: str | None) -> None:
        self.trackio.finish()


class TensorBoardTracker:
    """TensorBoard event files in the run folder's tensorboard/, through torch's SummaryWriter.
    TensorBoard names runs by folder: `tensorboard --logdir SWEEP_FOLDER` shows a sweep's runs together."""

    module = "torch.utils.tensorboard"  # needs the tensorboard package

    def __init__(self, settings: TrackConfig, folder: Path, saved: dict | None, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        logdir = folder / TENSORBOARD_FOLDER
        if saved is None:
            shutil.rmtree(logdir, ignore_errors=True)  # a run started over: old events would mix with the new
        self.writer = SummaryWriter(logdir, flush_secs=10)
        if saved is None:
            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), 0)  # a code block
        self.identity = {"logdir": TENSORBOARD_FOLDER}

    def log(self, values: dict, step: int) -> None:
        for key, value in values.items():
            if isinstance(value, str):
                self.writer.add_text(key, value, step)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def curve(self, name: str, rows: list[dict], first_step: int) -> None:
        for row in rows:
            self.log({f"tamper/{name}/{key}": value for key, value in row.items() if key != "step"}, row["step"])

    def summary(self, values: dict, step: int) -> None:
        self.log(values, step)

    def finish(self, status: str | None) -> None:
        self.writer.close()


# track.to name -> adapter; the extra that installs its library is peel[NAME].
TRACKERS = {"wandb": WandbTracker, "trackio": TrackioTracker, "tensorboard": TensorBoardTracker}


def check(names: list[str]) -> None:
    """A one-line PeelError for a tracker whose library is not installed: found before anything runs."""
    for name in names:
        try:
            importlib.import_module(TRACKERS[name].module)
        except ImportError as error:
            raise PeelError(
                f"track.to lists {name}, but it cannot be imported ({first_line(error)}); "
                f"accepted: install it with pip install 'peel[{name}]', or leave {name} out of track.to"
            ) from None


def warn(message: str) -> None:
    tqdm.write(f"peel: warning: {message}", file=sys.stderr)  # on a line of its own, under a progress bar


class Tracking:
    """The started trackers of one folder; every call reaches each of them, and a tracker that
    raises is dropped with a warning instead of stopping the run."""

    def __init__(self, folder: Path | None = None, trackers: dict | None = None, identities: dict | None = None,
                 logged_through: int = 0):
        self.folder = folder
        self.trackers = dict(trackers or {})
        self.identities = dict(identities or {})  # what tracking.json keeps: how to continue each tracked run
        self.logged_through = logged_through  # the trackers were given steps up to here before a restart
        self.last_step = logged_through

    def log(self, record: dict) -> None:
        """One metrics.jsonl record, at its step."""
        step = record["step"]
        if not self.trackers or step <= self.logged_through:
            return
        self._each("log", flatten({key: value for key, value in record.items() if key != "step"}, separator="/"), step)
        self.last_step = max(self.last_step, step)

    def curve(self, name: str, rows: list[dict]) -> None:
        """A tamper attack's curve ([{"step": .., TASK: accuracy}, ...])."""
        if self.trackers:
            self._each("curve", name, rows, self.last_step + 1)
            self.last_step += len(rows)  # the steps a single-axis tracker (wandb) used

    def finish(self, summarize: bool = True) -> None:
        """Close every tracker; first, when `summarize`, give each the folder's summary (run.json, eval.json)."""
        if not self.trackers:
            return
        summary = folder_summary(self.folder) if summarize else {}
        if summary:
            self._each("summary", summary, self.last_step)
        self._each("finish", summary.get("run/status"))
        self.trackers = {}
        self.save()

    def save(self) -> None:
        run_folder.write_json(self.folder / TRACKING_FILE, {"trackers": self.identities, "last_step": self.last_step})

    def _each(self, method: str, *arguments) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*arguments)
            except Exception as error:
                del self.trackers[name]
                warn(f"{name} tracking stopped ({type(error).__name__}: {first_line(error)}); the run goes on without it")


NOT_TRACKED = Tracking()  # what processes other than the main one, and runs without track.to, get


def start(settings: TrackConfig, config: dict, folder: Path, continuing: bool) -> Tracking:
    """The trackers `settings.to` names, started for run folder `folder`.

    `continuing` (a resumed run, or peel tamper adding to a run): the tracked runs in the folder's
    tracking.json go on, and the steps they were given are not given again; metrics.jsonl says
    which, so call this before it is cut back to the checkpoint. Otherwise new tracked runs start.
    `config` is the resolved config, logged once per tracked run. `track.name` defaults to the
    folder's name, `track.group` to the sweep it belongs to.
    """
    if not settings.to:
        return NOT_TRACKED
    folder = Path(folder)
    try:
        state = read_state(folder) if continuing else {}
        saved = state.get("trackers", {})
        logged_through = max(state.get("last_step", 0), last_step(folder / METRICS_FILE)) if continuing else 0
        resolved = dataclasses.replace(
            settings, name=settings.name or folder.name, group=settings.group or run_folder.sweep_of(folder)
        )
    except (PeelError, OSError) as error:
        warn(f"tracking did not start ({first_line(error)}); the run goes on without it")
        return NOT_TRACKED
    trackers, identities = {}, dict(saved)
    for name in dict.fromkeys(settings.to):
        try:
            trackers[name] = TRACKERS[name](resolved, folder, saved.get(name), config)
        except Exception as error:
            warn(f"{name} tracking did not start ({type(error).__name__}: {first_line(error)}); the run goes on without it")
            continue
        identities[name] = trackers[name].identity
    tracking = Tracking(folder, trackers, identities, logged_through)
    if trackers:
        tracking.save()
    return tracking


def log_curves(settings: TrackConfig, config: dict, folder: Path, curves: dict[str, list[dict]]) -> None:
    """peel tamper's curves, into the tracked runs of `folder` when it has them (new ones otherwise)."""
    tracking = start(settings, config, folder, continuing=(Path(folder) / TRACKING_FILE).is_file())
    for name, rows in curves.items():
        tracking.curve(name, rows)
    tracking.finish(summarize=False)


def read_state(folder: Path) -> dict:
    """tracking.json ({} when there is none)."""
    path = folder / TRACKING_FILE
    if not path.is_file():
        return {}
    state = run_folder.read_json(path, "tracking.json as peel writes it")
    if not isinstance(state, dict) or not isinstance(state.get("trackers", {}), dict):
        raise PeelError(f"{path} is not a tracking record; accepted: tracking.json as peel writes it")
    return state


def last_step(metrics: Path) -> int:
    """The last step in metrics.jsonl (0 without one); a line a kill cut short is passed over."""
    steps = [0]
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue
    return max(steps)


def folder_summary(folder: Path) -> dict:
    """run.json's status, wall time and peak memory, and eval.json's accuracies, as flat keys."""
    try:
        record, evaluation = run_folder.read_run_record(folder), read_evaluation(folder) or {}
    except PeelError as error:
        warn(f"the trackers get no summary ({first_line(error)})")
        return {}
    summary = {f"run/{key}": record[key] for key in ("status", "wall_seconds", "peak_memory_mb") if key in record}
    results = {"result": evaluation.get("accuracy", {}), "baseline": (evaluation.get("baseline") or {}).get("accuracy", {})}
    return {**summary, **flatten(results, separator="/")}
