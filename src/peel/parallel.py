"""One run over the processes torchrun starts: DDP, or FSDP2 (`fully_shard`) where weights are sharded.

Which engine (`train.parallel`, `choose`): full fine-tuning is always sharded with FSDP2. LoRA
uses DDP while the model fits one device and FSDP2 otherwise (`auto`), or what is asked
(`ddp`, `fsdp`). "Fits" is an estimate made once, from the loaded weights: they take at most
half of one device's memory (a GPU's total memory; on CPU, the host's memory divided among the
processes on it), leaving the other half for activations, a chunk of logits, the adapters and
their optimizer state. DDP keeps a whole copy per process and needs no gathering; FSDP2 holds
a shard of every layer per process and gathers each layer for each pass.

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
  unsharded parameter it gathers, so a frozen layer computes and reduces no weight gradient; with
  LoRA, a layer's frozen base weights and trainable adapters are one unit, and only the adapters'
  gradients are reduced. Adapters switched off (the probe's later layers) or skipped (early exit)
  get no gradient in that pass, and FSDP2 reduces only gradients that exist.

With one process there is nothing to wrap (`Local`), and the engine's code path is the same.
"""

from __future__ import annotations

import contextlib
import inspect
import os
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

    def __init__(self, weights, root: nn.Module | None = None):
        self.weights = weights

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """None: the model's own state dict is already whole."""
        return None

    def release(self) -> None:
        pass


class _ClassForward(nn.Module):
    """What DDP wraps: a module, run by its class's forward (its own `forward` attribute points at DDP)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return type(self.module).forward(self.module, *args, **kwargs)


def check_adapters_inside_decoder(weights) -> None:
    """Both engines sit on the decoder: a trainable parameter outside it would train unreduced."""
    inside = {id(parameter) for parameter in weights.anatomy.decoder.parameters()}
    outside = [name for name, parameter in weights.model.named_parameters() if parameter.requires_grad and id(parameter) not in inside]
    if outside:
        raise PeelError(
            f"under torchrun, adapters must sit in the decoder, where DDP / FSDP2 reduce their gradients; {outside[0]} "
            "is outside it (remove the unembedding from unlearn.lora.target_modules)"
        )


class Replicated:
    """DDP for LoRA: every process holds the whole model; adapter gradients are all-reduced (averaged).

    DDP prepares its all-reduce inside its own forward. The decoder's forward is therefore pointed
    at the DDP wrapper for the length of training, so the probe (entering through the causal LM)
    and early-exit passes (calling the decoder directly) are both DDP forwards. `release` points it
    back before saving or evaluation.

    `root` replaces the decoder as the module every pass that carries gradient enters (distill.py's
    student, which trains every parameter, the unembedding included).
    """

    def __init__(self, weights, root: nn.Module | None = None):
        from torch.nn.parallel import DistributedDataParallel

        if root is None:
            check_adapters_inside_decoder(weights)
        self.weights = weights
        self.root = weights.anatomy.decoder if root is None else root
        # Buffers never change in training, so they are not re-sent each forward (torch >= 2.13 names
        # that option forward_sync_buffers; earlier versions broadcast_buffers).
        options = inspect.signature(DistributedDataParallel).parameters
        buffers = "forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers"
        self.ddp = DistributedDataParallel(
            _ClassForward(self.root),
            find_unused_parameters=True,  # adapters off after the probe's layer; layers skipped by early exit
            init_sync=False,  # every process loads the same weights and seeds adapters alike: nothing to broadcast
            **{buffers: False},
        )
        # An instance attribute shadows the class's forward; a bound method, so it is not registered as a submodule.
        self.root.forward = self.ddp.__call__

    def accumulate(self, sync: bool) -> contextlib.AbstractContextManager:
        """Gradients stay local unless `sync`; the synced backward reduces everything accumulated so far."""
        return contextlib.nullcontext() if sync else self.ddp.no_sync()

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return None

    def release(self) -> None:
        self.root.__dict__.pop("forward", None)


class Sharded:
    """FSDP2: every decoder layer is a `fully_shard` unit; the decoder is the root.

    Parameters, gradients and optimizer state of a layer are split across processes and gathered
    for each pass. Layers reshard after every forward, so a layer's next gather always reads its
    current shards; `FullWeights` swaps original values into those same shards for the probe,
    so FSDP2 serves the original layers without a module outside its tree. The model may arrive
    on the host: `fully_shard` moves each layer to the device as it shards it, so no process ever
    holds the whole model there.
    """

    def __init__(self, weights):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        check_adapters_inside_decoder(weights)
        self.weights = weights
        self.decoder = weights.anatomy.decoder
        device = distributed.device()
        mesh = init_device_mesh(device.type, (distributed.world_size(),))
        for layer in weights.anatomy.layers:
            fully_shard(layer, mesh=mesh, reshard_after_forward=True)
        # The decoder (embeddings, final norm) is the root, not the causal LM: early-exit passes call
        # it directly, and FSDP2 requires the first forward of each iteration to enter at the root.
        fully_shard(self.decoder, mesh=mesh)
        weights.model.to(device)  # what lies outside the decoder (the unembedding); shards are there already

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


# The engine `choose` names -> how it spreads the weights over processes.
ENGINES = {"local": Local, "ddp": Replicated, "fsdp": Sharded}
FIT_SHARE = 0.5  # a model "fits one device" when its weights take at most this share of the device's memory


def choose(requested: str, adapter: str, model: torch.nn.Module, device: torch.device) -> str:
    """The engine of this run: `local` in one process; else `train.parallel`, with `auto` made
    concrete (the same answer on every process). Full fine-tuning is always `fsdp`."""
    if distributed.world_size() == 1:
        return "local"
    if adapter == "full":
        return "fsdp"
    if requested != "auto":
        return requested
    weight_bytes = sum(tensor.numel() * tensor.element_size() for tensor in model.parameters())
    return "ddp" if distributed.all_agree(weight_bytes <= FIT_SHARE * device_memory(device)) else "fsdp"


def device_memory(device: torch.device) -> int:
    """Bytes one process may count on: a GPU's total memory, or the host's divided among its processes."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host // int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size()))
