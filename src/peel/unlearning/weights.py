"""What trains, and how to see the original model, without keeping a second copy of it.

Two ways to train, one interface:
- LoRA: the original model *is* the base weights with the adapters off. Switching adapters off
  in the layers after L turns one forward pass into the probe (current up to L, original after).
- Full fine-tuning: only the target layer trains in its phase, so only earlier targets differ
  from the original. Each target layer's values are copied when its phase starts and exchanged
  with the current values wherever the original is needed. Extra memory is (targets / layers)
  of the model (divided again by the number of processes under FSDP2, where the copies are shards).

`original_from(first_layer)` makes layers >= first_layer original for the duration of a `with`:
`original_from(L + 1)` is the probe, `original_from(0)` the whole original model.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from peel.config import LoraOptions
from peel.anatomy import find_anatomy
from peel.models import peft_model


class LoraWeights:
    """Adapters in every layer, all trainable in every phase (the seed's LoRA runs)."""

    def __init__(self, model: nn.Module, options: LoraOptions):
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer

        lora_config = LoraConfig(
            r=options.rank,
            lora_alpha=options.alpha,
            lora_dropout=options.dropout,
            target_modules=options.target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = peft_model(model, lora_config)
        self.anatomy = find_anatomy(self.model)
        self.adapters_by_layer = [
            [module for module in layer.modules() if isinstance(module, LoraLayer)] for layer in self.anatomy.layers
        ]
        # The adapters each `original_from(first_layer)` switches, listed once rather than per pass.
        self.adapters_from = [
            [module for layer in self.adapters_by_layer[first:] for module in layer] for first in range(len(self.adapters_by_layer) + 1)
        ]

    def begin_phase(self, layer: int) -> None:
        """Nothing changes between phases: every adapter keeps training."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [parameter for parameter in self.model.parameters() if parameter.requires_grad]

    def changed_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter that can differ from the loaded model: the adapters (what a checkpoint keeps)."""
        return {name: parameter for name, parameter in self.model.named_parameters() if parameter.requires_grad}

    @contextlib.contextmanager
    def original_from(self, first_layer: int) -> Iterator[None]:
        switched = self.adapters_from[min(first_layer, len(self.adapters_from) - 1)]
        # The private flag, not `enable_adapters`: that would also flip requires_grad.
        for module in switched:
            module._disable_adapters = True
        try:
            yield
        finally:
            for module in switched:
                module._disable_adapters = False

    def l2sp_penalty(self, layer: int) -> torch.Tensor:
        """||w - w0||^2 of the target layer, i.e. the squared norm of its adapters' weight deltas."""
        deltas = [
            module.get_delta_weight(name).float().pow(2).sum()
            for module in self.adapters_by_layer[layer]
            for name in module.active_adapters
            if name in module.lora_A
        ]
        return torch.stack(deltas).sum()

    def update_deltas(self) -> Iterator[torch.Tensor]:
        """W - W0 of every adapted matrix: the adapter's merged delta (B A scaled), whole under FSDP2 too."""
        from peel.parallel import full_tensor

        for layer in self.adapters_by_layer:
            for module in layer:
                for name in module.active_adapters:
                    if name in module.lora_A:
                        yield full_tensor(module.get_delta_weight(name).detach())

    def save_adapter(self, folder) -> None:
        self.model.save_pretrained(folder, safe_serialization=True)

    def merged_model(self) -> nn.Module:
        return self.model.merge_and_unload()


class FullWeights:
    """Only the target layer trains in its phase; each target's original values are kept.

    Originals are kept as values, not as modules: `original_from` exchanges them with the current
    values in place. The layer modules never change, so under FSDP2 (where each process holds a
    shard of every parameter) the copies are shards too and FSDP2's own gathering serves the
    original layer; a deep-copied module would be a second, unsharded model part outside its tree.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.anatomy = find_anatomy(model)
        self.originals: dict[int, list[torch.Tensor]] = {}  # layer -> its parameters' original values
        self.current_layer: int | None = None
        model.requires_grad_(False)

    def begin_phase(self, layer: int) -> None:
        """Freeze everything but `layer`; the first time, copy its values (still the original's:
        a layer trains only in its own phase)."""
        self.model.requires_grad_(False)
        module = self.anatomy.layers[layer]
        if layer not in self.originals:
            self.originals[layer] = [parameter.detach().clone() for parameter in module.parameters()]
        module.requires_grad_(True)
        self.current_layer = layer

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.anatomy.layers[self.current_layer].parameters())

    def changed_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter that can differ from the loaded model: those of layers whose phase began."""
        begun = {id(parameter) for layer in self.originals for parameter in self.anatomy.layers[layer].parameters()}
        return {name: parameter for name, parameter in self.model.named_parameters() if id(parameter) in begun}

    @contextlib.contextmanager
    def original_from(self, first_layer: int) -> Iterator[None]:
        trained = [layer for layer in self.originals if layer >= first_layer]
        for layer in trained:
            self._exchange(layer)
        try:
            yield
        finally:
            for layer in trained:
                self._exchange(layer)

    def _exchange(self, layer: int) -> None:
        """Swap the current and the stored values of `layer`'s parameters (an exchange is its own inverse)."""
        from torch.distributed.tensor import DTensor

        with torch.no_grad():
            for parameter, stored in zip(self.anatomy.layers[layer].parameters(), self.originals[layer]):
                if isinstance(parameter, DTensor):
                    # FSDP2 gathers from the shard it registered, so the values must move into it.
                    held = parameter.detach().clone()
                    parameter.copy_(stored)
                    stored.copy_(held)
                else:
                    # A plain tensor can trade storage instead: no copy, no temporary layer-sized buffer.
                    parameter.data, stored.data = stored.data, parameter.data

    def l2sp_penalty(self, layer: int) -> torch.Tensor:
        pairs = zip(self.anatomy.layers[layer].parameters(), self.originals[layer])
        return torch.stack([(current.float() - original.float()).pow(2).sum() for current, original in pairs]).sum()

    def update_deltas(self) -> Iterator[torch.Tensor]:
        """W - W0 of every weight matrix of the layers trained so far (whole, under FSDP2 too)."""
        from peel.parallel import full_tensor

        for layer, originals in self.originals.items():
            for current, original in zip(self.anatomy.layers[layer].parameters(), originals):
                if current.ndim == 2:
                    yield full_tensor(current.detach()) - full_tensor(original)

    def merged_model(self) -> nn.Module:
        return self.model


# `unlearn.adapter` -> how to set the model up for training.
WEIGHTS = {
    "lora": lambda model, lora: LoraWeights(model, lora),
    "full": lambda model, lora: FullWeights(model),
}
