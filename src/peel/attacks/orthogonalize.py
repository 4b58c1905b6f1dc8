"""The orthogonalization attack: project the unlearning's directions out of the residual stream.

At every decoder layer, the directions are the top principal components of (attacked model -
original model) hidden states on forget-domain text (tamper.data): the right singular vectors of
the matrix of per-token differences, uncentred, so a constant shift (what RMU-like methods add)
is the first one. A forward hook then removes them from each layer's output, h <- h - V^T V h,
and the tasks are evaluated; no weight changes and no training. Lucki et al. (2024) found
ablating one such direction recovers most of what RMU removed.

Only a Gram matrix (hidden x hidden) per layer is kept, summed batch by batch, so the estimate's
memory does not grow with the text; both models are in memory while it is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from peel.config import AT_LEAST_ONE, NON_NEGATIVE, LayerRange, option

BATCH_SIZE = 8  # texts per estimation pass
RELATIVE_FLOOR = 1e-9  # eigenvalues below this share of the largest are rounding, not directions


@dataclass
class Options:
    components: int = option(1, "Directions removed at each layer (top principal components of the differences).", AT_LEAST_ONE)
    num_examples: int = option(64, "Texts of tamper.data the directions are estimated on (fewer if the corpus has fewer).", AT_LEAST_ONE)
    layers: list[int] | LayerRange = option(
        LayerRange(start=None, end=0, step=1),
        "Layers whose outputs lose their directions, as in unlearn.layers: {start, end, step} or a list; default every layer.",
        NON_NEGATIVE,
    )


def check(options: Options, num_layers: int, where: str) -> None:
    """Before any model loads: the layers exist in the attacked model."""
    from peel.layers import target_layers

    target_layers(options.layers, num_layers, f"{where} layers")


def directions(model, original, examples: list[list[int]], pad_token_id: int, components: int,
               layers: list[int] | None = None) -> dict:
    """layer -> [components, hidden] orthonormal rows: the top right singular vectors of the
    per-token hidden-state differences at that layer, over the real tokens of `examples`, for each
    of `layers` (default every layer)."""
    import torch

    from peel.data import collate
    from peel.anatomy import find_anatomy, hidden_states

    anatomy, reference = find_anatomy(model), find_anatomy(original)
    layers = sorted(range(anatomy.num_layers) if layers is None else layers)
    device = next(model.parameters()).device
    grams: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(examples), BATCH_SIZE):
            input_ids, attention_mask = (tensor.to(device) for tensor in collate(examples[start : start + BATCH_SIZE], pad_token_id))
            current = hidden_states(anatomy, input_ids, attention_mask, layers)
            before = hidden_states(reference, input_ids, attention_mask, layers)
            real = attention_mask.bool()
            for layer in layers:
                difference = (current[layer] - before[layer])[real].float()
                grams[layer] = grams.get(layer, 0) + difference.T @ difference
    found = {}
    for layer, gram in grams.items():
        values, vectors = torch.linalg.eigh(gram.double())  # eigenvalues ascending
        top, rows = values[-components:].flip(0), vectors[:, -components:].flip(-1).T
        # A direction along which nothing differs is no direction: eigh still returns some unit
        # vector for it, and removing that would change a model the unlearning never touched.
        kept = top > RELATIVE_FLOOR * values[-1].clamp_min(0) if values[-1] > 0 else torch.zeros_like(top, dtype=torch.bool)
        found[layer] = (rows * kept[:, None]).to(gram.dtype)
    return found


def project_out(model, found: dict) -> list:
    """Hooks removing `found[layer]`'s directions from each layer's output; returns their handles."""
    from peel.anatomy import find_anatomy

    handles = []
    for layer, module in enumerate(find_anatomy(model).layers):
        if layer in found:
            handles.append(module.register_forward_hook(_projection(found[layer])))
    return handles


def _projection(vectors):
    from peel.anatomy import output_changer

    def project(hidden):
        basis = vectors.to(hidden.device, hidden.dtype)
        return hidden - (hidden @ basis.T) @ basis

    return output_changer(project)


def untouched(settings: dict) -> bool:
    return False


def corpus(attack) -> tuple:
    settings = attack.settings
    return settings.data, attack.options.num_examples, settings.seed, False


def run(attack, session) -> dict:
    from peel.data import load_texts, tokenize
    from peel.anatomy import find_anatomy
    from peel.layers import target_layers

    settings = attack.settings
    texts = load_texts(settings.data, attack.options.num_examples, settings.seed, required=False)
    examples = tokenize(texts, session.tokenizer, settings.max_length)
    original = session.load_original()
    layers = target_layers(attack.options.layers, find_anatomy(session.model).num_layers, "orthogonalize.layers")
    found = directions(session.model, original, examples, session.tokenizer.pad_token_id, attack.options.components, layers)
    del original
    project_out(session.model, found)  # the session's model is this attack's alone
    return {"curve": [{"step": 0, **session.accuracy(settings.tasks)}]}
