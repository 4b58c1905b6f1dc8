"""The whole config: one field per section."""

from __future__ import annotations

from dataclasses import dataclass

from peel.config.fields import option
from peel.config.sections import (DataConfig, DistillConfig, EvalConfig, ModelConfig, ProbeConfig, TrackConfig,
                                  TrainConfig, UnlearnConfig)
from peel.config.tamper import TamperConfig


@dataclass
class Config:
    model: ModelConfig = option(ModelConfig(), "The model to unlearn.")
    data: DataConfig = option(DataConfig(), "Forget and retain corpora.")
    unlearn: UnlearnConfig = option(UnlearnConfig(), "The unlearning method.")
    train: TrainConfig = option(TrainConfig(), "Optimisation.")
    eval: EvalConfig = option(EvalConfig(), "Evaluation with lm-eval-harness.")
    tamper: TamperConfig = option(TamperConfig(), "The tampering attacks peel tamper runs: the attack grid (fine-tuning, few-shot, quantization, orthogonalization), its data and tasks.")
    track: TrackConfig = option(TrackConfig(), "Live experiment tracking (wandb, trackio, TensorBoard).")
    probe: ProbeConfig = option(ProbeConfig(), "Linear probes, the logit lens and the depth reader per layer (peel probe).")
    distill: DistillConfig = option(DistillConfig(), "Distillation of an unlearned model into a re-initialised mix (peel distill).")
    output_dir: str = option("runs/default", "The run folder.")
    notes: str = option("", "Free text shown in the Notes column of reports.")
