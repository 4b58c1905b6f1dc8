"""The latent attack: a trained perturbation of the residual stream, bounded by the hidden state's norm.

At each of `layers`, a learned vector (one per layer, the same at every position) is added to the
layer's output. At a token whose hidden state is h, what is added is epsilon * |h| * v / max(1, |v|),
so its norm is at most epsilon x |h| whatever v the training reaches, and epsilon sets the attack's
strength independently of the model's scale. The vectors start at zero (step 0 is the model as it
is) and are trained by next-token loss on tamper.data, like the soft prompt; the weights never
change. Che et al. (2025) find such latent perturbations among the tampering attacks that best
predict what other attacks recover.
"""

from __future__ import annotations

from dataclasses import dataclass

from peel.config import NON_NEGATIVE, POSITIVE, LayerRange, option


@dataclass
class Options:
    epsilon: float = option(
        0.1, "Largest perturbation norm at each token, relative to that token's hidden-state norm; 0 = the model as it is.",
        NON_NEGATIVE,
    )
    layers: list[int] | LayerRange = option(
        LayerRange(start=None, end=0, step=1),
        "Layers whose outputs are perturbed, as in unlearn.layers: {start, end, step} or a list; default every layer.",
        NON_NEGATIVE,
    )
    lr: float = option(1e-2, "Learning rate of the perturbation vectors (tamper.lr is the fine-tuning attack's).", POSITIVE)


def check(options: Options, num_layers: int, where: str) -> None:
    """Before any model loads: the layers exist in the attacked model."""
    from peel.layers import target_layers

    target_layers(options.layers, num_layers, f"{where} layers")


def perturbed(hidden, vector, epsilon: float):
    """`hidden` ([..., hidden]) plus epsilon * |h| * vector / max(1, |vector|) at every token."""
    direction = vector / vector.norm().clamp_min(1.0)
    scale = epsilon * hidden.float().norm(dim=-1, keepdim=True)
    return hidden + (scale * direction).to(hidden.dtype)


def perturbing(model, vectors: dict, epsilon: float) -> list:
    """Hooks adding `vectors[layer]`'s bounded perturbation to each such layer's output; returns their handles."""
    from peel.anatomy import find_anatomy, output_changer

    layers = find_anatomy(model).layers
    return [layers[layer].register_forward_hook(output_changer(lambda hidden, vector=vector: perturbed(hidden, vector, epsilon)))
            for layer, vector in vectors.items()]


def untouched(settings: dict) -> bool:
    return True  # the vectors start at zero


def evaluations(attack) -> int:
    from peel.attacks import fine_tune

    return fine_tune.evaluations(attack)


def run(attack, session) -> dict:
    import torch

    from peel.attacks import fine_tune, perturbation
    from peel.anatomy import find_anatomy
    from peel.layers import target_layers

    settings, options = attack.settings, attack.options
    anatomy = find_anatomy(session.model)
    layers = target_layers(options.layers, anatomy.num_layers, "latent.layers")
    device = next(session.model.parameters()).device
    vectors = {layer: torch.nn.Parameter(torch.zeros(session.model.config.hidden_size, device=device)) for layer in layers}
    perturbing(session.model, vectors, options.epsilon)  # the session's model is this attack's alone
    examples = fine_tune.attack_text(settings, session.tokenizer)
    return perturbation.train(attack, session, list(vectors.values()), options.lr, examples,
                              initial=session.known_untouched())
