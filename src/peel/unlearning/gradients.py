"""One optimizer step's gradient: forget and retain accumulated apart, reduced, then combined.

Everything here stays on the device: losses, token counts, the stop flag and gradient norms are
returned as tensors, and the engine reads them all in one copy to the host per step (a read
forces the device to finish its queued work; one per step is the least a step can do).
"""

from __future__ import annotations

import torch

from peel import distributed
from peel.runs import preemption
from peel.unlearning.filters import GRADIENT_FILTERS
from peel.unlearning.objectives import RETAIN_OBJECTIVES
from peel.unlearning.phase import Phase
from peel.parallel import full_tensor


def compute_gradients(phase: Phase, adversary, forget_batches, retain_batches, forget_coef: float, retain_coef: float,
                      step_in_phase: int = 0) -> dict[str, torch.Tensor]:
    """Leave one optimizer step's combined gradient in each of the phase's parameters' `.grad`.

    Forget and retain gradients are accumulated separately over the micro-batches, averaged
    across processes (by DDP or FSDP2, in each objective's last backward), then combined by the
    gradient filter; L2-SP is added after the filter (it is a pull toward the original weights,
    not a data gradient to be compared). The `adversary` (adversaries.py; `Plain` for none) runs
    the forget passes and gives the step's forget gradient, before the filter sees it: plain's, plus
    the forget gradient at attacked parameters (finetune), or the one at the worst nearby point (sam).
    Returns, as 0-d tensors: the step's mean losses, the gradient norms, L2-SP, whether any
    process was asked to stop (`stop` > 0) and, with keyword masks, the share of forget tokens
    that counted.
    """
    weights, parallelism, parameters, unlearn = phase.weights, phase.parallelism, phase.parameters, phase.unlearn
    scale = 1.0 / phase.examples_per_process  # per-example losses summed: the same step however the batch is split
    forget_losses, forget_gradients, adversary_statistics = adversary.step_forget_gradients(step_in_phase, forget_batches,
                                                                                             forget_coef, scale)
    retain_objective = RETAIN_OBJECTIVES[unlearn.retain_loss]
    retain_losses = backward_each(
        parallelism, retain_batches, retain_coef,
        lambda batch: retain_objective(weights, batch, list(phase.retain_layers), retain_coef * scale, phase.chunk_tokens),
    )
    retain_gradients = take_gradients(parameters)

    combine = GRADIENT_FILTERS[unlearn.grad_filter]
    for parameter, forget_gradient, retain_gradient in zip(parameters, forget_gradients, retain_gradients):
        parameter.grad = combine(forget_gradient, retain_gradient)
    l2sp = forget_losses.new_zeros(())
    if unlearn.l2sp_coef:
        penalty = weights.l2sp_penalty(phase.layer)
        (unlearn.l2sp_coef * penalty).backward()
        l2sp = full_tensor(penalty.detach()).float()

    # The stop flag and the keyword masks' token counts ride with the losses' one reduction, so
    # every process agrees to stop after the same step (a checkpoint is collective) and the share
    # is of all processes' tokens, without another synchronisation.
    stop_flag = forget_losses.new_tensor(float(preemption.requested() is not None))
    counted = sum(batch.counted.sum() for batch in forget_batches).float()
    real = sum(batch.attention_mask.sum() for batch in forget_batches).float()
    means = torch.stack([forget_losses.mean(), retain_losses.mean(), stop_flag, counted, real]).float()
    distributed.all_reduce_mean([means])
    forget_loss, retain_loss, stop, counted, real = means.unbind()
    statistics = {
        "stop": stop,
        "forget_loss": forget_loss,
        "retain_loss": retain_loss,
        "l2sp": l2sp,
        "forget_grad_norm": total_norm(forget_gradients),
        "retain_grad_norm": total_norm(retain_gradients),
        **adversary_statistics,
    }
    if forget_batches[0].loss_mask is not None:
        statistics["forget_token_share"] = counted / real
    return statistics


def backward_each(parallelism, batches, coefficient: float, objective) -> torch.Tensor:
    """`objective` (forward and backward) on each micro-batch; the per-example losses of all.

    Gradients stay on each process until the last micro-batch, whose backward reduces them.
    With a zero coefficient no backward runs at all, so nothing is reduced: every process's
    gradient is zero anyway.
    """
    losses = []
    for index, batch in enumerate(batches):
        with parallelism.accumulate(sync=index == len(batches) - 1 and coefficient != 0):
            losses.append(objective(batch))
    return torch.cat(losses)


def take_gradients(parameters) -> list[torch.Tensor]:
    """Detach the accumulated gradients from the parameters (zeros where none arrived)."""
    gradients = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
    for parameter in parameters:
        parameter.grad = None
    return gradients


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The norm of all tensors together, in float32. Shards (FSDP2) add their squares across
    processes in one reduction; replicated tensors (DDP, one process) are whole already."""
    from torch.distributed.tensor import DTensor

    local = [tensor.to_local() if isinstance(tensor, DTensor) else tensor for tensor in tensors]
    squares = torch.stack(torch._foreach_norm(local, 2, dtype=torch.float32)).square().sum()
    if any(isinstance(tensor, DTensor) for tensor in tensors):
        distributed.all_reduce_sum([squares])
    return squares.sqrt()


def read(statistics: dict[str, torch.Tensor]) -> dict[str, float]:
    """The step's statistics on the host: one device-to-host copy, the step's only synchronisation."""
    values = torch.stack([value.detach().float().reshape(()) for value in statistics.values()]).tolist()
    return dict(zip(statistics, values))
