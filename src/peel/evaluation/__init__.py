"""Evaluation with lm-eval-harness: peel's task YAMLs, an in-process adapter, a baseline cache."""

from peel.evaluation.cache import cached_baseline, load_baseline, store_baseline
from peel.evaluation.harness import evaluate, evaluate_with

__all__ = [
    "cached_baseline",
    "evaluate",
    "evaluate_with",
    "load_baseline",
    "store_baseline",
]
