"""lm-eval metric hooks named by the cloze task YAMLs (`process_results: !function metrics.NAME`)."""

from peel.evaluation.summary import probability_of


def correct_prob_results(doc, results):
    """{"correct_prob": softmax over the choices' log-likelihoods, at the correct choice}."""
    return {"correct_prob": probability_of([result[0] for result in results], int(doc["answer"]))}
