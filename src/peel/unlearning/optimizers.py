"""The optimizer of each phase: AdamW, or Muon for hidden weight matrices with AdamW for the rest.

Muon orthogonalises each update of a 2-D matrix (Newton-Schulz), which only makes sense for the
matrices inside the decoder layers: embeddings and the unembedding (never trained by peel anyway)
and every 1-D parameter (norms, biases) stay with AdamW, as in the research line's runs. The two
are driven as one optimizer, so the learning-rate schedule, gradient clipping and checkpoints
see one set of parameter groups.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from peel.errors import PeelError


class Combined(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped and saved as one.

    `param_groups` is the concatenation of theirs (the same dicts), so a scheduler's learning-rate
    changes reach every part; `state_dict` numbers parameters across the parts in that order.
    """

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = [part for part in parts if part.param_groups]
        # Deliberately not Optimizer.__init__: the parts own the parameters and their state.
        self.defaults = {}
        self.param_groups = [group for part in self.parts for group in part.param_groups]
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._zero_grad_profile_name = "Optimizer.zero_grad#Combined.zero_grad"

    @property
    def state(self):
        return {parameter: value for part in self.parts for parameter, value in part.state.items()}

    def step(self, closure=None):
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for part in self.parts:
            saved = part.state_dict()
            state.update({index + offset: value for index, value in saved["state"].items()})
            for group in saved["param_groups"]:
                groups.append({**group, "params": [index + offset for index in group["params"]]})
            offset += sum(len(group["params"]) for group in part.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        offset, group_index = 0, 0
        for part in self.parts:
            count = sum(len(group["params"]) for group in part.param_groups)
            groups = state_dict["param_groups"][group_index : group_index + len(part.param_groups)]
            part.load_state_dict({
                "state": {int(index) - offset: value for index, value in state_dict["state"].items()
                          if offset <= int(index) < offset + count},
                "param_groups": [{**group, "params": [index - offset for index in group["params"]]} for group in groups],
            })
            offset += count
            group_index += len(part.param_groups)
        # Loading replaces each part's group dicts: the schedule must drive the new ones.
        self.param_groups = [group for part in self.parts for group in part.param_groups]


def adamw(parameters: list[nn.Parameter], lr: float, weight_decay: float, **unused) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def muon(parameters, lr: float, weight_decay: float, muon_lr: float, muon_momentum: float, excluded: set[int]) -> torch.optim.Optimizer:
    """Muon for the 2-D matrices (not those in `excluded`: embeddings, unembedding), AdamW for the rest."""
    if not hasattr(torch.optim, "Muon"):
        raise PeelError(f"train.optimizer=muon needs torch.optim.Muon (torch 2.9 or newer); this is torch {torch.__version__}")
    matrices = [p for p in parameters if p.ndim == 2 and id(p) not in excluded]
    rest = [p for p in parameters if p.ndim != 2 or id(p) in excluded]
    parts = [torch.optim.Muon(matrices, lr=muon_lr, momentum=muon_momentum, weight_decay=weight_decay)] if matrices else []
    if rest:
        parts.append(torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay))
    return Combined(parts)


# `train.optimizer` -> how to build it from the phase's trainable parameters.
OPTIMIZERS = {"adamw": adamw, "muon": muon}


def make_optimizer(name: str, parameters: list[nn.Parameter], anatomy, lr: float, weight_decay: float,
                   muon_lr: float, muon_momentum: float) -> torch.optim.Optimizer:
    """The phase's optimizer; `anatomy` tells which matrices are embeddings, never Muon's."""
    embeddings = [anatomy.unembedding.weight]
    input_embeddings = getattr(anatomy.decoder, "get_input_embeddings", lambda: None)()
    if input_embeddings is not None:
        embeddings.append(input_embeddings.weight)
    excluded = {id(weight) for weight in embeddings}
    if name == "muon" and any(isinstance(parameter, DTensor) for parameter in parameters):
        raise PeelError("train.optimizer=muon under FSDP2 is not supported: Muon's update needs whole matrices and FSDP2 "
                        "holds shards (full fine-tuning on several processes, or LoRA sharded by train.parallel=fsdp or by "
                        "auto for a model too large for one device); accepted: one process, or LoRA with train.parallel=ddp")
    return OPTIMIZERS[name](parameters, lr=lr, weight_decay=weight_decay, muon_lr=muon_lr,
                            muon_momentum=muon_momentum, excluded=excluded)
