"""Adversaries inside the unlearning step (`unlearn.adversary`): unlearning that is trained to
survive an attack rather than only to look removed.

- none      plain peel: the forget loss on the probe (current layers <= L, original after).
- finetune  after TAR (tamper-resistant training): every `adversary_every` steps of a phase, a
            simulated fine-tuning attack, `adversary_steps` AdamW steps of next-token loss on
            forget-domain text (data.adversary), moves the *trained parameters only* (the
            adapters, or the target layer); the forget loss's gradient at that attacked point,
            times `adversary_coef`, is added to the step's forget gradient (first order: it is
            applied to the current parameters), and the parameters are put back exactly. Only the
            trained parameters are copied (one copy, plus the attack's AdamW state), never the model.
- latent    after targeted latent adversarial training: for each forget micro-batch,
            `latent_steps` of projected gradient descent choose a perturbation of the target
            layer's output hidden state that restores the forget text (lowers its next-token loss
            through the original later layers, as the probe runs them); the forget loss is then
            taken under that perturbation. Each token's perturbation has L2 norm at most
            `latent_epsilon` times the norm of that token's unperturbed hidden state (relative, so
            one epsilon means the same on models whose hidden states differ in scale).
- sam       sharpness-aware unlearning (Fan et al., ICML 2025): the forget loss at the worst point of a
            ball of radius `sam_rho` around the trained parameters. Each step takes the forget
            gradient g at the current point (reduced across processes), moves the trained parameters
            by sam_rho g / ||g|| (up the forget loss, which the unlearning lowers), takes the forget
            gradient there as the step's, and puts the parameters back exactly (one copy of the
            trained parameters). About twice plain's forget passes; rho 0 is plain bit for bit.

Under torchrun, the attack's micro-batches are reduced by DDP like the engine's own (2 processes
attack as 1 does); the latent search is per example and needs no reduction; sam's ascent direction
is the reduced gradient, the same on every process. FSDP2 is refused
(`refuse_sharding`): its resharding hooks expect every gradient pass to reach the parameters.
No adversary keeps state from one step to the next, so a resumed run continues as if never stopped.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from peel import distributed
from peel.unlearning import losses
from peel.unlearning.batches import example_order, process_share
from peel.unlearning.chunked import token_means
from peel.errors import PeelError
from peel.unlearning.gradients import backward_each, take_gradients, total_norm
from peel.anatomy import adding_to_output, hidden_states
from peel.unlearning.objectives import forget_backward, model_outputs, nll_retain_backward
from peel.unlearning.phase import Phase


class Plain:
    """unlearn.adversary: none."""

    def __init__(self, phase: Phase):
        self.phase = phase

    def step_forget_gradients(self, step_in_phase: int, forget_batches, coefficient: float, scale: float):
        """The step's forget passes over its micro-batches (reduced across processes in the last
        backward), and what the adversary adds: (per-example losses, gradients, statistics as 0-d tensors)."""
        s = self.phase
        losses = backward_each(s.parallelism, forget_batches, coefficient, lambda batch: self.forget_backward(batch, coefficient * scale))
        gradients = take_gradients(s.parameters)
        attacked, statistics = self.attacked_forget_gradients(step_in_phase, forget_batches, coefficient * scale)
        if attacked is not None:
            gradients = [gradient + extra for gradient, extra in zip(gradients, attacked)]
        return losses, gradients, statistics

    def forget_backward(self, batch, scale: float) -> torch.Tensor:
        """The forget loss's forward and backward on one micro-batch (objectives.forget_backward)."""
        s = self.phase
        return forget_backward(s.weights, batch, s.layer, s.unlearn, scale, s.chunk_tokens, self.perturbation(batch),
                               s.collapse_basis)

    def perturbation(self, batch) -> torch.Tensor | None:
        """What the probe adds to the target layer's output: nothing."""
        return None

    def attacked_forget_gradients(self, step_in_phase: int, forget_batches, scale: float):
        """(gradients to add to the step's forget gradients or None, statistics as 0-d tensors)."""
        return None, {}


class FineTune(Plain):
    """unlearn.adversary: finetune."""

    def __init__(self, phase: Phase):
        super().__init__(phase)
        s, unlearn = phase, phase.unlearn
        attacks = math.ceil(s.steps / unlearn.adversary_every)
        needed = attacks * unlearn.adversary_steps * s.global_batch_size
        # The attack's batches, like the engine's, are a pure function of (seed, phase): resuming needs no state.
        self.order = example_order(len(s.attack_text), math.ceil(needed / len(s.attack_text)), s.seed, s.number)

    def attacked_forget_gradients(self, step_in_phase: int, forget_batches, scale: float):
        s, unlearn = self.phase, self.phase.unlearn
        if step_in_phase % unlearn.adversary_every:
            return None, {}
        saved = [parameter.detach().clone() for parameter in s.parameters]
        attack_loss = self.attack(step_in_phase // unlearn.adversary_every)
        attacked_scale = scale * unlearn.adversary_coef
        attacked_losses = backward_each(
            s.parallelism, forget_batches, attacked_scale, lambda batch: self.forget_backward(batch, attacked_scale)
        )
        gradients = take_gradients(s.parameters)
        with torch.no_grad():
            for parameter, value in zip(s.parameters, saved):
                parameter.copy_(value)
        means = torch.stack([attack_loss, attacked_losses.mean()]).float()
        distributed.all_reduce_mean([means])
        return gradients, {"adversary_nll": means[0], "attacked_forget_loss": means[1]}

    def attack(self, attack_number: int) -> torch.Tensor:
        """`adversary_steps` AdamW steps of next-token loss on the trained parameters; the last step's mean loss."""
        s, unlearn = self.phase, self.phase.unlearn
        optimizer = torch.optim.AdamW(s.parameters, lr=unlearn.adversary_lr, weight_decay=0.0)
        scale = 1.0 / s.examples_per_process
        for step in range(unlearn.adversary_steps):
            position = attack_number * unlearn.adversary_steps + step
            micro = process_share(self.order, position, s.global_batch_size).split(s.per_device_batch_size)
            batches = [s.attack_text.batch(indices) for indices in micro]
            per_example = backward_each(
                s.parallelism, batches, 1.0, lambda batch: nll_retain_backward(s.weights, batch, [], scale, s.chunk_tokens)
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return per_example.mean()


class Latent(Plain):
    """unlearn.adversary: latent."""

    def perturbation(self, batch) -> torch.Tensor:
        """Projected gradient descent on the forget text's next-token loss over a perturbation of
        the target layer's output, within each token's L2 ball (normalised steps of 2 radius / steps)."""
        s, unlearn = self.phase, self.phase.unlearn
        weights, layer = s.weights, s.layer
        with torch.no_grad():
            state = hidden_states(weights.anatomy, batch.input_ids, batch.model_mask, [layer])[layer]
        radius = unlearn.latent_epsilon * state.float().norm(dim=-1, keepdim=True)
        step_size = 2 * radius / unlearn.latent_steps
        perturbation = torch.zeros_like(state)
        next_tokens, counted = batch.input_ids[:, 1:], batch.counted[:, 1:]
        for _ in range(unlearn.latent_steps):
            perturbation.requires_grad_(True)
            # Gradient with respect to the perturbation only: nothing reaches the parameters, so the
            # passes stay out of DDP's reduction. The trained parameters are frozen meanwhile, so the
            # layers up to the target (which the perturbation does not reach) keep no activations.
            with s.parallelism.accumulate(sync=False), weights.original_from(layer + 1), frozen(s.parameters), \
                    adding_to_output(weights.anatomy.layers[layer], perturbation):
                outputs = model_outputs(weights, batch, s.chunk_tokens).shifted()
                loss = token_means(losses.nll_tokens, [outputs], [next_tokens], counted).sum()
                (gradient,) = torch.autograd.grad(loss, perturbation)
            direction = gradient.float() / gradient.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
            moved = perturbation.detach().float() - step_size * direction
            within = (radius / moved.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1)
            perturbation = (moved * within).to(state.dtype)
        return perturbation.detach()


class SharpnessAware(Plain):
    """unlearn.adversary: sam."""

    def step_forget_gradients(self, step_in_phase: int, forget_batches, coefficient: float, scale: float):
        s = self.phase
        losses, gradients, _ = super().step_forget_gradients(step_in_phase, forget_batches, coefficient, scale)
        # The reduced gradient gives the direction, so every process moves to the same point.
        ratio = s.unlearn.sam_rho / total_norm(gradients).clamp_min(1e-12)
        saved = [parameter.detach().clone() for parameter in s.parameters]
        with torch.no_grad():
            for parameter, gradient in zip(s.parameters, gradients):
                parameter.add_(gradient * ratio.to(gradient.dtype))
        sharp = backward_each(s.parallelism, forget_batches, coefficient, lambda batch: self.forget_backward(batch, coefficient * scale))
        gradients = take_gradients(s.parameters)
        with torch.no_grad():
            for parameter, value in zip(s.parameters, saved):
                parameter.copy_(value)
        mean = sharp.mean().float().reshape(1)
        distributed.all_reduce_mean([mean])
        return losses, gradients, {"attacked_forget_loss": mean[0]}


@contextlib.contextmanager
def frozen(parameters: list) -> Iterator[None]:
    """The parameters take no gradient inside (no graph is recorded through them); their flags come back after."""
    flags = [parameter.requires_grad for parameter in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, flags):
            parameter.requires_grad_(flag)


# `unlearn.adversary` -> what runs inside each step.
ADVERSARIES = {"none": Plain, "finetune": FineTune, "latent": Latent, "sam": SharpnessAware}


def refuse_sharding(adversary: str, engine: str) -> None:
    """The adversaries run with one process or DDP; FSDP2 is refused before anything trains."""
    if adversary != "none" and engine == "fsdp":
        raise PeelError(
            f"unlearn.adversary={adversary} under FSDP2 (full fine-tuning under torchrun, or train.parallel=fsdp) is not "
            "supported; accepted: one process, or LoRA with train.parallel ddp (or auto on a model that fits one device)"
        )
