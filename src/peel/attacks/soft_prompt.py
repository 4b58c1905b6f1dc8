"""The soft-prompt attack: trained input embeddings put before every prompt; no weight changes.

`tokens` vectors in the input-embedding space, started from the embeddings of real tokens of the
attack text (drawn with tamper.seed), are trained by next-token loss on tamper.data, the
attacker's forget-domain text, never the evaluated questions; the tasks are evaluated with the
prompt before every question at step 0, every eval_every steps and the last, as the fine-tuning
attack is. An attacker with the weights can always do this; Schwinn et al. (2024, "Soft prompt
threats") found such prompts bring back knowledge that unlearning had seemed to remove.

The prompt goes in through hooks on the causal LM: a pre-hook embeds the input ids, puts the
prompt before them and passes the result as inputs_embeds (the attention mask, if any, grows by as
many ones); a hook after the forward pass drops the prompt's positions from the logits. lm-eval's
HFLM calls the model with bare input ids and reads the logits of the context and continuation, so
each question is scored exactly as the plain task would score it with the prompt before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from peel.config import AT_LEAST_ONE, POSITIVE, option


@dataclass
class Options:
    tokens: int = option(16, "Trainable input embeddings put before every prompt.", AT_LEAST_ONE)
    lr: float = option(1e-3, "Learning rate of the prompt (tamper.lr is the fine-tuning attack's).", POSITIVE)


def initial_prompt(model, examples: list[list[int]], tokens: int, seed: int):
    """[tokens, hidden] float32: the input embeddings of `tokens` token positions of `examples`
    drawn with `seed` (real tokens, so the prompt starts where the model's inputs live)."""
    import torch

    from peel.anatomy import causal_lm

    every = torch.tensor([token for example in examples for token in example])
    chosen = every[torch.randint(len(every), (tokens,), generator=torch.Generator().manual_seed(seed))]
    embedding = causal_lm(model).get_input_embeddings()
    with torch.no_grad():
        return embedding(chosen.to(embedding.weight.device)).float().clone()


def prepending(model, prompt) -> list:
    """Hooks putting `prompt` ([tokens, hidden]) before every input of `model`'s causal LM and
    taking its positions out of the logits; returns their handles. The model must be called with
    its input ids as the first argument or `input_ids=` (as lm-eval and the attack do), not with
    labels: their loss would be computed on the longer sequence."""
    import torch

    from peel.errors import PeelError
    from peel.anatomy import causal_lm

    network = causal_lm(model)
    embedding = network.get_input_embeddings()
    length = prompt.shape[0]

    def before(module, args, kwargs):
        input_ids = kwargs.pop("input_ids", None)
        if input_ids is None:
            input_ids, args = args[0], args[1:]
        if args or "labels" in kwargs or "inputs_embeds" in kwargs:
            raise PeelError("the soft-prompt attack calls the model with input ids and keyword arguments only, no labels")
        embedded = embedding(input_ids)
        batch = embedded.shape[0]
        kwargs["inputs_embeds"] = torch.cat([prompt.to(embedded.dtype).expand(batch, -1, -1), embedded], dim=1)
        if kwargs.get("attention_mask") is not None:
            mask = kwargs["attention_mask"]
            kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, length), mask], dim=1)
        return (), kwargs

    def after(module, args, output):
        output.logits = output.logits[:, length:]
        return output

    return [network.register_forward_pre_hook(before, with_kwargs=True), network.register_forward_hook(after)]


def untouched(settings: dict) -> bool:
    return False  # step 0 already has the (untrained) prompt before every question


def evaluations(attack) -> int:
    """Step 0 with the prompt, then the steps the fine-tuning loop evaluates."""
    from peel.attacks import fine_tune

    return 1 + fine_tune.evaluations(attack)


def run(attack, session) -> dict:
    import torch

    from peel.attacks import fine_tune, perturbation

    settings = attack.settings
    examples = fine_tune.attack_text(settings, session.tokenizer)
    prompt = torch.nn.Parameter(initial_prompt(session.model, examples, attack.options.tokens, settings.seed))
    prepending(session.model, prompt)  # the session's model is this attack's alone
    return perturbation.train(attack, session, [prompt], attack.options.lr, examples, initial=None)
