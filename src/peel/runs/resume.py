"""What running a command again on an existing run folder does.

- A completed run is not run again.
- A folder whose config.yaml differs from the config given is refused (one line naming the
  differences; `track.*` does not count: where a run is watched does not change what it
  computes, so a run resumes under new tracking settings, which config.yaml then holds), unless
  `force`: then the run starts over in that folder, and the results of the old run (model,
  adapter, evaluation, attacks) are removed with its checkpoint.
- Otherwise the run continues from the folder's checkpoint, or starts over when there is none;
  metrics.jsonl is cut back to the checkpoint so every step appears in it exactly once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from peel.config import Config, flatten, load_config, to_dict
from peel.errors import PeelError
from peel.runs import checkpoint, folder as run_folder
from peel.runs.folder import CONFIG_FILE, METRICS_FILE

# What `folder_state` finds.
NEW, RESUME, COMPLETED = "new", "resume", "completed"


def folder_state(output_dir: Path, config: Config, force: bool, uncompared: tuple[str, ...] = ()) -> str:
    """NEW, RESUME or COMPLETED; a folder holding a run of another config is refused. Keys under
    `uncompared` (e.g. a section the run does not read) may differ."""
    config_file = output_dir / CONFIG_FILE
    if force or not config_file.exists():
        return NEW
    differences = config_differences(load_config(config_file, relative_to_file=False), config, uncompared)
    if differences:
        shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
        raise PeelError(
            f"{output_dir} holds a run with a different config ({shown}); "
            "rerun with its config to resume it, pass --force to start it over, or choose another output_dir"
        )
    status = run_folder.read_run_record(output_dir).get("status")
    return COMPLETED if status == "completed" else RESUME


# Keys a run may change between its starts.
UNCOMPARED_PREFIXES = ("track.",)


def config_differences(saved: Config, given: Config, uncompared: tuple[str, ...] = ()) -> list[str]:
    """`key: saved -> given` for every compared leaf key whose value differs."""
    before, after = flatten(to_dict(saved)), flatten(to_dict(given))
    ignored = UNCOMPARED_PREFIXES + uncompared
    keys = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key) and not key.startswith(ignored))
    return [f"{key}: {before.get(key)!r} in the folder, {after.get(key)!r} now" for key in keys]




def rewind(output_dir: Path, saved: dict | None) -> None:
    """Drop what the folder holds past `saved` (everything when there is no checkpoint to continue from)."""
    if saved is None:
        checkpoint.remove(output_dir)
        for name in run_folder.RESULTS:
            path = output_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    metrics = output_dir / METRICS_FILE
    if metrics.exists():
        keep = saved["metrics_bytes"] if saved else 0
        os.truncate(metrics, min(keep, metrics.stat().st_size))
