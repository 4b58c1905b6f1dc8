"""Configuration: nested dataclasses (the sections), YAML files, dotted `key=value` overrides.

fields.py is the machinery (defaults, help, bounds, checking), sections.py / tamper.py / root.py
the sections, files.py the files and overrides. Loading a config imports neither torch nor
transformers (a test holds it so): commands check a config in well under a second.
"""

from peel.config.fields import (AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Bound, build, deep_merge, describe,
                                flatten, help_lines, is_number_field, option, to_dict)
from peel.config.files import apply_overrides, load_config, read_yaml, save_config
from peel.config.root import Config
from peel.config.sections import (AdversarySource, ChatSource, DataConfig, DataSource, DistillConfig, EvalConfig,
                                  ForgetSource, LayerRange, LoraOptions, ModelConfig, ProbeConfig, TrackConfig,
                                  TrainConfig, UnlearnConfig)
from peel.config.tamper import GRID_WIDE_KEYS, SEED_ATTACK_SWEEP, TamperConfig, split_tasks

__all__ = [
    "AT_LEAST_ONE", "FRACTION", "NON_NEGATIVE", "POSITIVE", "Bound", "build", "deep_merge", "describe", "flatten",
    "help_lines", "is_number_field", "option", "to_dict", "apply_overrides", "load_config", "read_yaml", "save_config", "Config",
    "AdversarySource", "ChatSource", "DataConfig", "DataSource", "DistillConfig", "EvalConfig", "ForgetSource",
    "LayerRange", "LoraOptions", "ModelConfig", "ProbeConfig", "TrackConfig", "TrainConfig", "UnlearnConfig",
    "GRID_WIDE_KEYS", "SEED_ATTACK_SWEEP", "TamperConfig", "split_tasks",
]
