"""One pass over a task's questions: each layer's pooled hidden states and its logit-lens scores.

Every choice is fed as context + choice, tokenized as lm-eval tokenizes a multiple-choice request
(trailing spaces of the context move into the continuation; no special tokens; an empty context
becomes the bos or eos token), so the last layer's lens scores are lm-eval's log-likelihoods.
Hidden states are the decoder layers' outputs (before the final norm), from peel.models' capture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from peel.probing.lens import continuation_log_likelihood
from peel.probing.tasks import ProbeTask


def pool_last(hidden: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The state at position end - 1 of each row."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), end - 1]


def pool_mean(hidden: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The mean of each row's states at positions [start, end)."""
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    inside = ((positions >= start[:, None]) & (positions < end[:, None])).to(hidden.dtype)
    return (hidden * inside[..., None]).sum(1) / inside.sum(1, keepdim=True)


# probe.pooling -> how a sequence's hidden states become one feature vector
POOLINGS = {"last": pool_last, "mean": pool_mean}


@dataclass
class Readout:
    # layer -> [rows, hidden]: one row per question (the context's state) or one per
    # (question, choice) (the context + choice's state), as the probe kind reads them
    features: dict[int, np.ndarray]
    # layer -> [questions x choices]: each choice's log-likelihood read through the logit lens
    lens_scores: dict[int, np.ndarray]
    # layer -> [questions x choices]: each choice's log-likelihood when the original model finishes
    # the layer's output (depth.py); empty without an original
    depth_scores: dict[int, np.ndarray]


def encode(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """Token ids of context + continuation and how many belong to the context, as lm-eval splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix, *tokenizer(continuation, add_special_tokens=False).input_ids], 1
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    return whole, len(tokenizer(context, add_special_tokens=False).input_ids)


def sequences(tokenizer, task: ProbeTask, max_length: int) -> list[tuple[int, list[int], int]]:
    """(row, token ids, context length) per (question, choice), in question order; a sequence past
    max_length loses its start, as in lm-eval."""
    rows = []
    for question in task.questions:
        for choice in question.choices:
            tokens, context_length = encode(tokenizer, question.context, choice)
            cut = max(len(tokens) - max_length, 0)
            rows.append((len(rows), tokens[cut:], max(context_length - cut, 1)))
    return rows


def batch_tensors(batch: list, pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, their attention mask, each row's context length and length."""
    length = max(len(tokens) for _, tokens, _ in batch)
    ids = torch.full((len(batch), length), pad, dtype=torch.long)
    for index, (_, tokens, _) in enumerate(batch):
        ids[index, :len(tokens)] = torch.tensor(tokens)
    ends = torch.tensor([len(tokens) for _, tokens, _ in batch], device=device)
    contexts = torch.tensor([context for _, _, context in batch], device=device)
    mask = (torch.arange(length, device=device)[None] < ends[:, None]).long()
    return ids.to(device), mask, contexts, ends


def read_task(model, tokenizer, task: ProbeTask, layers: list[int], pooling: str, by_question: bool,
              batch_size: int, max_length: int, description: str = "", original=None) -> Readout:
    """Features per layer: with `by_question`, one row per question pooled over its context; else one
    row per (question, choice) pooled over context + choice. Lens scores, and with `original` (the
    model the target was made from) depth scores: one per (question, choice)."""
    from peel.anatomy import find_anatomy, hidden_states
    from peel.probing.depth import spliced_scores

    anatomy = find_anatomy(model)
    original_anatomy = None if original is None else find_anatomy(original)
    rows = sequences(tokenizer, task, max_length)
    # a question's context state is read from its first choice's sequence
    first_choice = {int(row): index for index, row in enumerate(np.cumsum([0] + [len(q.choices) for q in task.questions])[:-1])}
    width = anatomy.unembedding.weight.shape[1]
    features = {layer: np.zeros((len(task.questions) if by_question else len(rows), width), np.float32) for layer in layers}
    lens_scores = {layer: np.zeros(len(rows), np.float64) for layer in layers}
    depth_scores = {} if original is None else {layer: np.zeros(len(rows), np.float64) for layer in layers}
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(rows, key=lambda row: -len(row[1]))  # longest first: little padding, memory errors at once
    was_training = model.training
    model.eval()
    try:
        for begin in tqdm(range(0, len(order), batch_size), desc=f"probe {description}".strip(), dynamic_ncols=True, leave=False):
            batch = order[begin:begin + batch_size]
            ids, mask, contexts, ends = batch_tensors(batch, pad, device)
            numbers = [row for row, _, _ in batch]
            kept = [index for index, row in enumerate(numbers) if row in first_choice]
            with torch.inference_mode():
                states = hidden_states(anatomy, ids, mask, layers)
                for layer in layers:
                    # the lens runs in the model's dtype (its norm's weights are in it); probes read float32
                    lens_scores[layer][numbers] = continuation_log_likelihood(anatomy, states[layer], ids, contexts, ends).cpu().numpy()
                    hidden = states[layer].float()
                    if by_question and kept:
                        pooled = POOLINGS[pooling](hidden[kept], torch.zeros_like(contexts[kept]), contexts[kept])
                        features[layer][[first_choice[numbers[index]] for index in kept]] = pooled.cpu().numpy()
                    elif not by_question:
                        features[layer][numbers] = POOLINGS[pooling](hidden, torch.zeros_like(ends), ends).cpu().numpy()
                if original_anatomy is not None:
                    for layer, scores in spliced_scores(original_anatomy, states, ids, mask, contexts, ends).items():
                        depth_scores[layer][numbers] = scores.cpu().numpy()
    finally:
        model.train(was_training)
    return Readout(features, lens_scores, depth_scores)
