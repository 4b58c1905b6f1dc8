"""What every training loop's run shares, from its first write to its last: `peel unlearn`
(unlearning/engine.py) and `peel distill` (distill.py) both live through these steps.

    open_run      every process has read the folder; the main process writes config.yaml, starts
                  the trackers, drops what lies past the checkpoint and marks run.json running
    attended      around training and finishing: a signal leaves run.json `preempted`, a failure
                  `failed` (with error.log when it was not a known one); the trackers finish
    complete      the results move into place, run.json says `completed`, the checkpoint goes

and what a run reads of its original model: the model itself (`load_original`) and its
evaluation (`original_baseline`, cached under the model, the tasks and `eval.include_path`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from peel import distributed
from peel.config import Config, EvalConfig, ModelConfig
from peel.errors import Preempted, RunFailed, first_line
from peel.models import load_model, model_location
from peel.runs import checkpoint, folder as run_folder, tracking
from peel.runs.evaluations import write_evaluation
from peel.runs.folder import CONFIG_FILE, MODEL_FOLDER, PARTIAL_SUFFIX, RUN_FILE
from peel.runs.resume import rewind


def load_original(model: ModelConfig, dtype: str):
    """The model a run starts from, on the host, as the config names it."""
    return load_model(model_location(model.name_or_path, model.gguf_file), dtype=dtype,
                      attn_implementation=model.attn_implementation, revision=model.revision,
                      trust_remote_code=model.trust_remote_code)


def original_baseline(model: ModelConfig, settings: EvalConfig, compute: Callable[[], dict]) -> dict | None:
    """The original model's evaluation on `settings`' tasks (main process; None elsewhere or
    without tasks): from the cache, else `compute()`, stored for next time."""
    if not settings.tasks or not distributed.is_main():
        return None
    from peel.evaluation import cached_baseline

    return cached_baseline(model_location(model.name_or_path, model.gguf_file), settings.tasks, settings.limit,
                           settings.max_length, compute, revision=model.revision, include_path=settings.include_path)


def open_run(output_dir: Path, config: Config, saved: dict | None, resuming: bool, started: float, device,
             engine: str) -> tracking.Tracking:
    """Once every process has read the folder: the main process writes the resolved config, starts
    the trackers, drops what lies past `saved` and marks run.json running. Returns the trackers
    (none on the other processes)."""
    from peel.config import save_config, to_dict

    tracker = tracking.NOT_TRACKED
    distributed.barrier()  # every process has read the folder before the main process changes it
    if distributed.is_main():
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / CONFIG_FILE)
        # Before the rewind: metrics.jsonl still says which steps the trackers were given.
        tracker = tracking.start(config.track, to_dict(config), output_dir, resuming)
        rewind(output_dir, saved)
        run_folder.write_json(output_dir / RUN_FILE, run_folder.run_record("running", started, device, parallel=engine))
    return tracker


@contextlib.contextmanager
def attended(output_dir: Path, started: float, device, tracker: tracking.Tracking, steps_done: Callable[[], int]) -> Iterator[None]:
    """The run inside: a stop asked for by a signal (`Preempted`, after a checkpoint) leaves run.json
    `preempted` at `steps_done()`; any other failure leaves it `failed` with the reason, and the
    traceback in error.log when the failure was not a known one (raised again as `RunFailed`
    naming the log). The trackers finish either way, with run.json as it was left."""
    try:
        yield
    except Preempted:
        if distributed.is_main():
            run_folder.write_json(output_dir / RUN_FILE, run_folder.run_record("preempted", started, device, step=steps_done()))
        raise
    except BaseException as error:
        log = run_folder.mark_failed(output_dir, error, started, device) if distributed.is_main() else None
        if log is None:
            raise  # a known failure (its message says it all), an interruption, or another process's copy
        raise RunFailed(f"{type(error).__name__}: {first_line(error)}; full traceback in {log}") from error
    finally:
        tracker.finish()


def evaluate_result(model, tokenizer, settings: EvalConfig, output_dir: Path, baseline: dict | None) -> dict | None:
    """The finished model on `settings`' tasks, written to eval.json beside the baseline (main
    process, before the model moves into place); None without tasks."""
    if not settings.tasks:
        return None
    from peel.evaluation import evaluate_with

    results = evaluate_with(model, tokenizer, settings)
    write_evaluation(output_dir, str(output_dir / MODEL_FOLDER), results, baseline)
    return results


def complete(output_dir: Path, folders: tuple[str, ...], started: float, device, **record) -> None:
    """Move each finished `NAME.partial` folder into place as NAME (a run folder has a model/ only
    once it completed), mark run.json `completed` with `record`, and drop the checkpoint."""
    for name in folders:
        run_folder.replace_folder(output_dir / (name + PARTIAL_SUFFIX), output_dir / name)
    run_folder.write_json(output_dir / RUN_FILE, run_folder.run_record("completed", started, device, **record))
    checkpoint.remove(output_dir)  # model/ holds the result now
