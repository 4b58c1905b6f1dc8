"""The logit lens: a layer's hidden state read as if it were the last, through the model's final
norm and unembedding, and the task's accuracy when choices are scored that way.

At the last layer this is the model's own output, so the lens there gives `peel eval`'s accuracy;
at earlier layers it shows from which depth the answer can be read off the output head.
"""

from __future__ import annotations

import numpy as np
import torch

from peel.probing.tasks import ProbeTask


def lens_logits(anatomy, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of hidden states through the final norm and the model's output head (the plain
    unembedding where peel does not know the head's extra steps)."""
    head = anatomy.output_head or anatomy.unembedding
    return head(anatomy.final_norm(hidden)).float()


def continuation_log_likelihood(anatomy, hidden: torch.Tensor, ids: torch.Tensor, contexts: torch.Tensor,
                                ends: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of tokens [context, end) given the ones before them,
    read through the lens from `hidden` ([rows, tokens, width], the layer's outputs)."""
    positions = torch.arange(ids.shape[1] - 1, device=ids.device)
    # the state at position p predicts token p + 1: the continuation's tokens are predicted from
    # positions context - 1 .. end - 2
    scored = (positions[None] >= contexts[:, None] - 1) & (positions[None] < ends[:, None] - 1)
    rows, columns = scored.nonzero(as_tuple=True)
    log_probabilities = torch.log_softmax(lens_logits(anatomy, hidden[rows, columns]), dim=-1)
    token_scores = log_probabilities.gather(1, ids[rows, columns + 1][:, None]).squeeze(1)
    return torch.zeros(ids.shape[0], device=ids.device, dtype=token_scores.dtype).index_add_(0, rows, token_scores)


def lens_accuracy(task: ProbeTask, scores: np.ndarray) -> float:
    """Share of questions whose highest-scoring choice is the answer (lm-eval's acc), over every question."""
    correct, start = 0, 0
    for question in task.questions:
        choice_scores = scores[start:start + len(question.choices)]
        correct += int(np.argmax(choice_scores) == question.gold)
        start += len(question.choices)
    return correct / len(task.questions)
