"""Attacks on a model's unlearning, and the grids that take their worst case.

    kinds.py         the table of attack kinds: fine_tune, few_shot, quantize, orthogonalize, prune, prompt,
                     soft_prompt, latent
    fine_tune.py     the fine-tuning loop (relearning on forget or, benign, on retain text)
    few_shot.py      examples of the forget task in the prompt
    quantize.py      weights rounded to a few bits and back
    orthogonalize.py the unlearning's directions projected out of the residual stream
    prune.py         a share of each weight row zeroed (WandA, or where the unlearning changed it most)
    prompt.py        templates around each forget question (jailbreak, expert persona, prefilling)
    soft_prompt.py   trained input embeddings before every prompt
    latent.py        a trained, norm-bounded push on the residual stream
    perturbation.py  what soft_prompt and latent share: their tensors trained with fine_tune's loop
    plan.py          a grid's attacks per target, every setting checked before any model loads
    baseline.py      what the original model knew, and where that comes from
    folder.py        attacks/NAME.json per finished attack, attacks/grid.json, tamper.json assembled
    running.py       the grid here, one attack after another, or one Slurm job per attack
    results.py       tamper.json: worst case, recovery, summary (pure functions on plain data)
"""
