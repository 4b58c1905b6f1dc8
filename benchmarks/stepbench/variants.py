"""The variants the step benchmark compares. Each is built from its own copy of the base model
and returns a `step(forget, retain)`: one optimizer step, returning [forget loss, retain loss].

- peel       the engine's own code: `weights.LoraWeights` / `FullWeights` set up as a run does,
             `gradients.compute_gradients` (probe, retain passes, gradient filter) with one
             process's `parallel.Local`, then clipping and the AdamW update as `engine.run_phase`
             does, with the settings' `loss_chunk_tokens`, `gradient_checkpointing` and `compile`;
- reference  the step as the research code computes it: a deep copy of the whole model is the
             original; the forget batch runs through every current layer (logits included), then
             through the copy's layers L+1.. and head; the retain reference comes from the copy;
             both losses go into one backward. It must give peel's loss values (checked);
- floor      only the passes the algorithm cannot avoid: forward+backward of the forget batch
             through the model and head, one no-grad and one forward+backward of the retain batch
             as deep as the retain loss needs, and the optimizer update (whole logits, plain PyTorch).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from peel.unlearning import losses, recompute
from peel import parallel
from peel.config import LoraOptions, UnlearnConfig
from peel.unlearning.adversaries import ADVERSARIES
from peel.unlearning.gradients import compute_gradients, read
from peel.unlearning.phase import Phase
from peel.unlearning.losses import l2_distance
from peel.anatomy import compile_layers, find_anatomy, hidden_states, layer_output, logits
from peel.unlearning.objectives import Batch
from peel.unlearning.weights import FullWeights, LoraWeights

from stepbench.timing import Clock, update
from stepbench.workload import Settings

VARIANTS = ("peel", "reference", "floor")
# The forget losses the reference and the floor compute (on the probe's whole logits).
PROBE_LOSSES = {
    "random_ce": lambda logits, batch: losses.random_ce(logits, batch.attention_mask, batch.random_targets),
    "max_entropy_kl": lambda logits, batch: losses.max_entropy_kl(logits, batch.attention_mask),
}


def peel_weights(model, mode: str, settings: Settings):
    """peel's weights object, as the engine sets it up."""
    if mode == "lora":
        torch.manual_seed(settings.seed + 1)  # the same initial adapters in every variant
        weights = LoraWeights(model, LoraOptions())
    else:
        weights = FullWeights(model)
        for layer in settings.schedule:  # a run's last phase holds every target's originals: the most
            weights.begin_phase(layer)
        weights.begin_phase(settings.layer)
    recompute.apply(weights.model, weights.anatomy, settings.gradient_checkpointing)
    if settings.compile:
        compile_layers(weights.anatomy)
    return weights


def plain_trainable(model, mode: str, settings: Settings, layer: int):
    """The reference's and the floor's trainable setup: peel's adapters (so the same initial
    adapters), or the target layer alone; no originals kept."""
    if mode == "lora":
        torch.manual_seed(settings.seed + 1)
        network = LoraWeights(model, LoraOptions()).model
    else:
        network = model.requires_grad_(False)
        find_anatomy(network).layers[layer].requires_grad_(True)
    return network, [parameter for parameter in network.parameters() if parameter.requires_grad]


class TimedLocal(parallel.Local):
    """One process, exactly `parallel.Local`; also marks on the clock where each objective's
    passes end (the engine enters `accumulate` once per micro-batch: forget first, then retain)."""

    def __init__(self, weights, clock: Clock):
        super().__init__(weights)
        self.clock = clock
        self.calls = 0

    @contextlib.contextmanager
    def accumulate(self, sync: bool):
        yield
        self.clock.lap(("forget", "retain")[self.calls % 2])
        self.calls += 1


def peel_variant(weights, settings: Settings, layer: int, clock: Clock, unlearn: UnlearnConfig | None = None,
                 attack_text=None):
    """The engine's own step: `gradients.compute_gradients`, then the update as `engine.run_phase`
    does it, with the step's one read of its statistics. The step's adversary is `unlearn.adversary`
    (adversaries.py), made from the phase as `engine.run_phase` makes it, reading `attack_text`;
    every step is then the first of an attack (step_in_phase 0)."""
    parameters = weights.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr)
    parallelism = TimedLocal(weights, clock)
    unlearn = unlearn or UnlearnConfig(forget_loss=settings.forget_loss, retain_loss="l2", grad_filter="none", l2sp_coef=0.0)
    phase = Phase(weights=weights, parallelism=parallelism, parameters=parameters, layer=layer, unlearn=unlearn,
                  examples_per_process=settings.batch_size, retain_layers=tuple(settings.retain_layer_list(layer)),
                  chunk_tokens=settings.loss_chunk_tokens, seed=settings.seed, global_batch_size=settings.batch_size,
                  per_device_batch_size=settings.batch_size, attack_text=attack_text)
    adversary = ADVERSARIES[unlearn.adversary](phase)

    def step(forget: Batch, retain: Batch):
        statistics = compute_gradients(phase, adversary, [forget], [retain], settings.forget_coef, settings.retain_coef)
        max_norm = settings.max_grad_norm if settings.max_grad_norm > 0 else float("inf")
        statistics["grad_norm"] = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        values = read(statistics)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.lap("update")
        return [values["forget_loss"], values["retain_loss"]]

    return step


def reference_variant(model, mode, settings: Settings, layer: int, clock: Clock):
    original = copy.deepcopy(model).requires_grad_(False)
    current, parameters = plain_trainable(model, mode, settings, layer)
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr)
    current_anatomy, original_anatomy = find_anatomy(current), find_anatomy(original)
    retain_layers = settings.retain_layer_list(layer)

    def full_forward(network, anatomy, batch: Batch, capture: list[int]):
        """The whole model, logits included; returns the captured layer outputs (and the arguments
        the decoder handed to the layer after the last captured one) and the model's output."""
        captured, handles = {}, []
        for index in capture:
            hook = lambda module, args, output, index=index: captured.__setitem__(index, layer_output(output))
            handles.append(anatomy.layers[index].register_forward_hook(hook))
        following = max(capture) + 1
        if following < anatomy.num_layers:
            hook = lambda module, args, kwargs: captured.__setitem__("call", (args[1:], kwargs))
            handles.append(anatomy.layers[following].register_forward_pre_hook(hook, with_kwargs=True))
        output = network(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        for handle in handles:
            handle.remove()
        return captured, output

    def step(forget: Batch, retain: Batch):
        # Probe: the current model through all layers, then the copy from layer L+1 on, called
        # with the very arguments (mask, positions) the current decoder gave its layer L+1: exact
        # under any attention implementation and padding, as peel's probe is.
        captured, forget_output = full_forward(current, current_anatomy, forget, [layer])
        hidden = captured[layer]
        if layer + 1 < original_anatomy.num_layers:
            extra_args, kwargs = captured["call"]
            for original_layer in original_anatomy.layers[layer + 1 :]:
                hidden = layer_output(original_layer(hidden, *extra_args, **kwargs))
            probe = original_anatomy.unembedding(original_anatomy.final_norm(hidden))
        else:
            probe = forget_output.logits
        forget_losses = PROBE_LOSSES[settings.forget_loss](probe, forget)
        clock.lap("forget")
        with torch.no_grad():
            reference, _ = full_forward(original, original_anatomy, retain, retain_layers)
        current_states, retain_output = full_forward(current, current_anatomy, retain, retain_layers)
        current_states = {index: current_states[index] for index in retain_layers}
        reference = {index: reference[index] for index in retain_layers}
        retain_losses = l2_distance(current_states, reference, retain.attention_mask)
        # One backward of the summed loss, as the research code does: both graphs alive at once.
        total = (settings.forget_coef * forget_losses.sum() + settings.retain_coef * retain_losses.sum()) / settings.batch_size
        total.backward()
        clock.lap("retain")
        update(parameters, optimizer, settings.max_grad_norm)
        values = torch.stack([forget_losses.mean(), retain_losses.mean()]).float().tolist()
        clock.lap("update")
        return values

    return step


def floor_variant(model, mode, settings: Settings, layer: int, clock: Clock):
    network, parameters = plain_trainable(model, mode, settings, layer)
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr)
    anatomy = find_anatomy(network)
    retain_layers = settings.retain_layer_list(layer)
    scale = 1.0 / settings.batch_size

    def step(forget: Batch, retain: Batch):
        probe = logits(network, forget.input_ids, forget.attention_mask)
        forget_losses = PROBE_LOSSES[settings.forget_loss](probe, forget)
        del probe
        (scale * forget_losses.sum()).backward()
        clock.lap("forget")
        with torch.no_grad():
            reference = hidden_states(anatomy, retain.input_ids, retain.attention_mask, retain_layers)
        current = hidden_states(anatomy, retain.input_ids, retain.attention_mask, retain_layers)
        retain_losses = l2_distance(current, reference, retain.attention_mask)
        (scale * retain_losses.sum()).backward()
        clock.lap("retain")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        values = torch.stack([forget_losses.mean(), retain_losses.mean()]).float().tolist()
        clock.lap("update")
        return values

    return step


def build_variant(name: str, model, mode: str, settings: Settings, clock: Clock):
    if name == "peel":
        return peel_variant(peel_weights(model, mode, settings), settings, settings.layer, clock)
    if name == "reference":
        return reference_variant(model, mode, settings, settings.layer, clock)
    return floor_variant(model, mode, settings, settings.layer, clock)
