"""Linear probes: scikit-learn logistic regression on one layer's features, trained on a seeded
split of the questions and scored on the held-out ones.

Three kinds, chosen per task (`probe_kind`):
- label: the choices are the same for every question (A-D letters): the answer's index is
  predicted from the context's hidden state.
- answer (probe.cloze: answer): the choices are per-question text drawn from a recurring pool (the
  testbed's 64 animals, genes, seasons, ...): the answer's text is a class predicted from the
  context's hidden state, and a question's choices are ranked by their classes' scores. This reads
  what the model predicts; it needs answers that recur between the training and held-out questions.
- choice (probe.cloze: choice): a binary probe (is this the answer?) on the hidden state of
  context + choice; a question's highest-scoring choice is its answer. This needs a model that
  represents whether a stated answer is right, which the testbed's tiny models do not.
The split depends only on the number of questions and the seed, so every target of one
`peel probe` is probed on the same questions. Features are standardized first (the scale of hidden
states grows with depth); the regression's default L2 penalty keeps a probe from memorising.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np

from peel.probing.tasks import ProbeTask


def question_split(num_questions: int, train_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and the held-out questions (each at least one), both sorted."""
    order = np.random.default_rng(seed).permutation(num_questions)
    cut = min(max(round(train_share * num_questions), 1), num_questions - 1)
    return np.sort(order[:cut]), np.sort(order[cut:])


def classifier(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))


def label_probe(features: np.ndarray, task: ProbeTask, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    gold = np.array([question.gold for question in task.questions])
    classes = np.unique(gold[train])
    if len(classes) == 1:  # nothing to separate: the probe can only name the one class it saw
        return float(np.mean(gold[test] == classes[0]))
    probe = classifier(seed).fit(features[train], gold[train])
    return float(np.mean(probe.predict(features[test]) == gold[test]))


def answer_probe(features: np.ndarray, task: ProbeTask, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    answers = np.array([question.choices[question.gold] for question in task.questions], dtype=object)
    classes = sorted(set(answers[train]))
    if len(classes) == 1:
        return rank_accuracy(task, test, lambda question, index: [float(choice == classes[0]) for choice in question.choices])
    with warnings.catch_warnings():  # many classes with few examples each is what this probe expects
        warnings.filterwarnings("ignore", message="The number of unique classes")
        probe = classifier(seed).fit(features[train], answers[train].astype(str))
    scores = probe.decision_function(features[test])
    scores = scores[:, None] if scores.ndim == 1 else scores
    column = {name: index for index, name in enumerate(probe.classes_)}
    if len(classes) == 2:  # a binary regression scores the second class; the first is its negative
        scores = np.concatenate([-scores, scores], axis=1)
    rows = {index: row for row, index in enumerate(test)}
    # a choice never seen as an answer in training cannot be predicted: it ranks last
    return rank_accuracy(task, test, lambda question, index: [
        scores[rows[index], column[choice]] if choice in column else -np.inf for choice in question.choices])


def choice_probe(features: np.ndarray, task: ProbeTask, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    owners = np.repeat(np.arange(len(task.questions)), [len(question.choices) for question in task.questions])
    correct = np.concatenate([np.arange(len(question.choices)) == question.gold for question in task.questions])
    training_rows = np.isin(owners, train)
    scores = classifier(seed).fit(features[training_rows], correct[training_rows]).decision_function(features)
    return rank_accuracy(task, test, lambda question, index: scores[owners == index])


def rank_accuracy(task: ProbeTask, test: np.ndarray, score) -> float:
    """Share of held-out questions whose answer scores highest; `score(question, index)` gives its
    choices' scores, and a tie counts as the answer's share of the tied choices."""
    total = 0.0
    for index in test:
        question = task.questions[index]
        values = np.asarray(score(question, index), dtype=float)
        best = np.flatnonzero(values == values.max())
        total += float(question.gold in best) / len(best)
    return total / len(test)


# probe kind -> (the probe, whether it reads the context's state (True) or context + choice's)
PROBES = {"label": (label_probe, True), "answer": (answer_probe, True), "choice": (choice_probe, False)}


def probe_kind(task: ProbeTask, cloze: str) -> str:
    """label for shared choices (A-D); otherwise probe.cloze (answer or choice)."""
    return "label" if task.shared_choices else cloze


def probe_accuracy(kind: str, task: ProbeTask, features: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    return PROBES[kind][0](features, task, train, test, seed)


def chance(kind: str, task: ProbeTask, train: np.ndarray, test: np.ndarray) -> float:
    """What a probe that read nothing in the hidden states would score on the held-out questions:
    1 / choices, or, where it is higher, picking the answer seen most often in training (the
    commonest index for a label probe, the commonest answer text among the choices otherwise)."""
    uniform = float(np.mean([1 / len(task.questions[index].choices) for index in test]))
    if kind == "choice":
        return uniform
    if kind == "label":
        seen = Counter(task.questions[index].gold for index in train)
        return max(uniform, rank_accuracy(task, test, lambda question, index: [seen[i] for i in range(len(question.choices))]))
    seen = Counter(task.questions[index].choices[task.questions[index].gold] for index in train)
    return max(uniform, rank_accuracy(task, test, lambda question, index: [seen[choice] for choice in question.choices]))


def answers_seen(task: ProbeTask, train: np.ndarray, test: np.ndarray) -> float:
    """Share of held-out questions whose answer text is some training question's answer: the most
    an answer probe can score (it never predicts an answer it was not shown)."""
    seen = {task.questions[index].choices[task.questions[index].gold] for index in train}
    return float(np.mean([task.questions[index].choices[task.questions[index].gold] in seen for index in test]))
