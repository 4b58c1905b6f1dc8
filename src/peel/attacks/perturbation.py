"""What the soft-prompt and latent attacks share: a few tensors trained against frozen weights.

Each of them puts trainable tensors into the model's forward pass with hooks (a prompt before the
input embeddings, vectors added to the residual stream) and leaves every weight as it is. The
tensors are trained by next-token loss on tamper.data with the fine-tuning attack's own loop
(fine_tune.tamper: its optimizer, schedule, warmup, clipping, evaluation steps and preemption),
handed a module whose only parameters are those tensors. The tasks are evaluated with the hooks in
place, so lm-eval scores each question through the perturbed model, as the attacker would use it.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from peel.attacks import fine_tune


class Perturbation(torch.nn.Module):
    """The frozen model as the fine-tuning loop sees it: a module whose parameters are only the
    attack's tensors. The model is kept in a list, not as a submodule, so neither the loop's
    `requires_grad_` nor its `train()` reaches the weights (their dropout stays off)."""

    def __init__(self, model, tensors: list[torch.nn.Parameter]):
        super().__init__()
        self.tensors = torch.nn.ParameterList(tensors)
        self.frozen = [model]

    def forward(self, input_ids, attention_mask, labels):
        logits = self.frozen[0](input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return SimpleNamespace(loss=next_token_loss(logits, labels))


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each next token whose label is not -100 (padding), as transformers' causal LM loss."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )


def freeze(model) -> None:
    """No gradient for any weight: the attack trains its own tensors only."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def train(attack, session, tensors: list[torch.nn.Parameter], lr: float, examples: list[list[int]],
          initial: dict[str, float] | None) -> dict:
    """Train `tensors` (already hooked into the session's model) on `examples` with the attack's
    tamper settings and `lr`; the curve of tamper.tasks at step 0, every eval_every and the last.
    `initial` is step 0's row when it is known to be the untouched model's."""
    settings = attack.settings
    freeze(session.model)
    loop = {**fine_tune.loop_settings(settings), "adapter": "full", "lr": lr}
    try:
        curve = fine_tune.tamper(Perturbation(session.model, tensors), session.tokenizer, examples, **loop,
                                 measure=lambda _: session.accuracy(settings.tasks), initial=initial,
                                 should_stop=session.should_stop)
    except fine_tune.AttackDiverged as diverged:  # what it reached until then counts, as for fine-tuning
        print(f"{attack.name}: {diverged}")
        return {"curve": diverged.history, "error": str(diverged)}
    return {"curve": curve}
