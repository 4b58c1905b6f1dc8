"""One run over the processes torchrun starts: DDP for LoRA, FSDP2 (`fully_shard`) for full fine-tuning.

The engine runs several passes per optimizer step and keeps two gradients apart, so the standard
engines are used in a particular way. Why each choice is correct:

- Two objectives, reduced separately. Forget and retain gradients are each accumulated over the
  step's micro-batches with gradient sync off and reduced once, in the backward of the last
  micro-batch (DDP `no_sync`, FSDP2 `set_requires_gradient_sync`). The sign filter then compares
  gradients that are already averaged over all processes, as the filter must: filtering each
  process's share and then averaging is a different (batch-split dependent) operation. Under
  FSDP2 the reduced gradients are shards; the filters are elementwise, so a shard is filtered
  exactly as the whole tensor would be.
- Passes enter the decoder two ways: through the causal LM (probe, KL and NLL losses) and
  directly, with the layer list truncated, for early-exit hidden states. Both engines are attached
  to the decoder module, so every pass that carries gradient goes through them, whichever way it
  came in. The unembedding is outside: it never trains (LoRA puts no adapter there; full
  fine-tuning trains decoder layers only), so it stays a plain replicated module.
- Passes use different parameters: the probe switches off adapters after the target layer, early
  exit skips later layers altogether. DDP is told (`find_unused_parameters`) to look at what each
  pass used instead of waiting for gradients that never come.
- Per-layer freezing is plain `requires_grad`: FSDP2 copies each sharded parameter's flag to the
  unsharded parameter it gathers, so a frozen layer computes and reduces no weight gradient.

With one process there is nothing to wrap (`Local`), and the engine's code path is the same.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator

import torch
from torch import nn

from peel import distributed
from peel.errors import PeelError


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every process (a collective for FSDP2 shards; the tensor itself otherwise)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(whole: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`whole` laid out like `reference`: this process's shard of it when `reference` is sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    whole = whole.to(device=reference.device, dtype=reference.dtype)
    if isinstance(reference, DTensor):
        # Every process holds the whole tensor, so each cuts its own shard: no communication.
        return distribute_tensor(whole, reference.device_mesh, reference.placements, src_data_rank=None)
    return whole


class Local:
    """One process: gradients are complete as computed."""

    def __init__(self, weights):
        self.weights = weights

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """None: the model's own state dict is already whole."""
        return None

    def release(self) -> None:
        pass


class _DecoderForward(nn.Module):
    """What DDP wraps: the decoder, run by its class's forward."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, *args, **kwargs):
        return type(self.decoder).forward(self.decoder, *args, **kwargs)


class Replicated:
    """DDP for LoRA: every process holds the whole model; adapter gradients are all-reduced (averaged).

    DDP prepares its all-reduce inside its own forward. The decoder's forward is therefore pointed
    at the DDP wrapper for the length of training, so the probe (entering through the causal LM)
    and early-exit passes (calling the decoder directly) are both DDP forwards. `release` points it
    back before saving or evaluation.
    """

    def __init__(self, weights):
        from torch.nn.parallel import DistributedDataParallel

        self.weights = weights
        self.decoder = weights.anatomy.decoder
        inside = {id(parameter) for parameter in self.decoder.parameters()}
        outside = [name for name, parameter in weights.model.named_parameters() if parameter.requires_grad and id(parameter) not in inside]
        if outside:
            raise PeelError(
                f"under torchrun, adapters must sit in the decoder, where DDP reduces their gradients; {outside[0]} "
                "is outside it (remove the unembedding from unlearn.lora.target_modules)"
            )
        # Buffers never change in training, so they are not re-sent each forward (torch >= 2.13 names
        # that option forward_sync_buffers; earlier versions broadcast_buffers).
        options = inspect.signature(DistributedDataParallel).parameters
        buffers = "forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers"
        self.ddp = DistributedDataParallel(
            _DecoderForward(self.decoder),
            find_unused_parameters=True,  # adapters off after the probe's layer; layers skipped by early exit
            init_sync=False,  # every process loads the same weights and seeds adapters alike: nothing to broadcast
            **{buffers: False},
        )
        # An instance attribute shadows the class's forward; a bound method, so it is not registered as a submodule.
        self.decoder.forward = self.ddp.__call__

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        """Gradients stay local unless `sync`; the synced backward reduces everything accumulated so far."""
        return contextlib.nullcontext() if sync else self.ddp.no_sync()

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return None

    def release(self) -> None:
        self.decoder.__dict__.pop("forward", None)


class Sharded:
    """FSDP2 for full fine-tuning: every decoder layer is a `fully_shard` unit; the decoder is the root.

    Parameters, gradients and optimizer state of a layer are split across processes and gathered
    for each pass. Layers reshard after every forward, so a layer's next gather always reads its
    current shards; `FullWeights` swaps original values into those same shards for the probe,
    so FSDP2 serves the original layers without a module outside its tree.
    """

    def __init__(self, weights):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.weights = weights
        self.decoder = weights.anatomy.decoder
        device = next(self.decoder.parameters()).device
        mesh = init_device_mesh(device.type, (distributed.world_size(),))
        for layer in weights.anatomy.layers:
            fully_shard(layer, mesh=mesh, reshard_after_forward=True)
        # The decoder (embeddings, final norm) is the root, not the causal LM: early-exit passes call
        # it directly, and FSDP2 requires the first forward of each iteration to enter at the root.
        fully_shard(self.decoder, mesh=mesh)

    @contextlib.contextmanager
    def accumulate(self, sync: bool) -> Iterator[None]:
        """Without `sync`, gradients accumulate unsharded; the synced backward reduce-scatters them all."""
        self.decoder.set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            self.decoder.set_requires_gradient_sync(True)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's state dict on the main process (empty elsewhere); every process must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.weights.model, options=options)

    def release(self) -> None:
        pass


# `unlearn.adapter` -> the engine that spreads it over processes (one process: `Local`).
ENGINES = {"lora": Replicated, "full": Sharded}


def wrap(weights, adapter: str):
    return ENGINES[adapter](weights) if distributed.world_size() > 1 else Local(weights)
