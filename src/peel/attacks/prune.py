"""The pruning attack: set a share of each decoder weight row to zero, then evaluate; no training.

by: wanda (Sun et al. 2023, "WandA"; one of Che et al. 2025's tampering attacks) scores each
weight of a linear layer by |W_ij| x |X_j|, the norm of input feature j over the real tokens of
`num_examples` texts of tamper.data, and zeroes the lowest-scoring `sparsity` share of each output
row. The norms come from one pass of the unpruned model (WandA proper measures each layer after
pruning the ones before it). Pruning the weights that matter least to the model can still remove a
small, targeted change such as the one unlearning made.

by: change zeroes, in each row, the `sparsity` share of weights that the unlearning changed most,
|W - W_original| (weights it left as they were are never pruned): the targeted variant, which
needs the original model, as the orthogonalization attack does.

Embeddings, norms and the head stay as they are, as in the quantization attack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peel.config import AT_LEAST_ONE, Bound, option

BATCH_SIZE = 8  # texts per pass measuring the input norms


@dataclass
class Options:
    sparsity: float = option(0.1, "Share of each output row's weights set to zero; 0 = the model as it is.",
                             Bound(minimum=0, maximum=1, exclusive_maximum=True))
    by: Literal["wanda", "change"] = option(
        "wanda", "Which weights go: wanda = the smallest |W| x input norm on tamper.data; change = the ones the "
        "unlearning changed most, |W - W_original| (needs the original model: --baseline)."
    )
    num_examples: int = option(128, "Texts of tamper.data the input norms are measured on (by: wanda).", AT_LEAST_ONE)


def linear_layers(model) -> dict:
    """name -> every torch.nn.Linear of the decoder layers."""
    import torch

    from peel.anatomy import find_anatomy

    return {name: module for name, module in find_anatomy(model).layers.named_modules() if isinstance(module, torch.nn.Linear)}


def input_norms(model, examples: list[list[int]], pad_token_id: int) -> dict:
    """name -> [in_features] float32: the L2 norm of each input feature of each decoder linear
    layer over the real (not padding) tokens of `examples`."""
    import torch

    from peel.data import collate

    linears = linear_layers(model)
    squares: dict = {}
    real = {}  # the current batch's token mask, read by the hooks

    def hook_for(name):
        def hook(module, args):
            features = args[0][real["mask"]].float()
            squares[name] = squares.get(name, 0) + (features * features).sum(dim=0)

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in linears.items()]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(examples), BATCH_SIZE):
                input_ids, attention_mask = (t.to(device) for t in collate(examples[start : start + BATCH_SIZE], pad_token_id))
                real["mask"] = attention_mask.bool()
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: total.sqrt() for name, total in squares.items()}


def prune_rows(weight, scores, sparsity: float, candidates=None) -> None:
    """Zero, in place, the int(sparsity x columns) lowest-scoring weights of each row of `weight`,
    only among `candidates` (a boolean mask) when given."""
    import torch

    count = int(sparsity * weight.shape[1])
    if count == 0:
        return
    scores = scores.float() if candidates is None else torch.where(candidates, scores.float(), torch.inf)
    lowest = torch.zeros_like(weight, dtype=torch.bool).scatter_(1, scores.topk(count, dim=1, largest=False).indices, True)
    if candidates is not None:
        lowest &= candidates
    weight.masked_fill_(lowest, 0)


def prune_by_wanda(model, norms: dict, sparsity: float) -> int:
    """Prune each decoder linear weight by |W| x its input norms; the number of linear layers."""
    import torch

    linears = linear_layers(model)
    with torch.no_grad():
        for name, module in linears.items():
            prune_rows(module.weight, module.weight.abs() * norms[name].to(module.weight.device), sparsity)
    return len(linears)


def prune_by_change(model, original, sparsity: float) -> int:
    """Prune each decoder linear weight where it differs most from `original`'s; the number of linear layers."""
    import torch

    linears, before = linear_layers(model), linear_layers(original)
    with torch.no_grad():
        for name, module in linears.items():
            change = (module.weight.float() - before[name].weight.to(module.weight.device).float()).abs()
            prune_rows(module.weight, -change, sparsity, candidates=change > 0)
    return len(linears)


def needs_original(attack) -> bool:
    return attack.options.by == "change"


def untouched(settings: dict) -> bool:
    return settings.get("sparsity") == 0


def corpus(attack) -> tuple | None:
    settings = attack.settings
    return (settings.data, attack.options.num_examples, settings.seed, False) if attack.options.by == "wanda" else None


def run(attack, session) -> dict:
    from peel.data import load_texts, tokenize
    from peel.errors import PeelError

    settings, options = attack.settings, attack.options
    if options.by == "wanda":
        texts = load_texts(settings.data, options.num_examples, settings.seed, required=False)
        examples = tokenize(texts, session.tokenizer, settings.max_length)
        pruned = prune_by_wanda(session.model, input_norms(session.model, examples, session.tokenizer.pad_token_id),
                                options.sparsity)
    else:
        original = session.load_original()
        pruned = prune_by_change(session.model, original, options.sparsity)
        del original
    if pruned == 0:
        raise PeelError("the prune attack found no torch.nn.Linear weight in the decoder layers; "
                        "accepted: models whose layers use nn.Linear (GPT-NeoX, Llama, Qwen2, ...)")
    return {"curve": [{"step": 0, **session.accuracy(settings.tasks)}]}
