"""Which facts a model knows: 4-option cloze questions scored by lm-eval, as the tasks score them.

Each choice's summed log-probability after the prompt comes from lm-eval's own `HFLM.loglikelihood`,
so a question counts as known here exactly when `elements_forget` / `elements_retain` would count it
as answered.
"""

from __future__ import annotations


def answered(model, tokenizer, rows: list[dict], batch_size: int = 64) -> list[bool]:
    """For each `{"prompt", "choices", "answer"}` row: does the highest-scoring choice match the answer?"""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from peel.evaluation.harness import quiet_lm_eval

    requests = [
        Instance(request_type="loglikelihood", doc=row, arguments=(row["prompt"], choice), idx=index)
        for row in rows for index, choice in enumerate(row["choices"])
    ]
    with quiet_lm_eval():
        language_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        scores = [score for score, _ in language_model.loglikelihood(requests, disable_tqdm=True)]
    results, start = [], 0
    for row in rows:
        row_scores = scores[start : start + len(row["choices"])]
        start += len(row["choices"])
        results.append(max(range(len(row_scores)), key=row_scores.__getitem__) == row["answer"])
    return results
