"""The dataset loader named by the scenario task YAMLs (`custom_dataset: !function loaders.questions`).

lm-eval imports this file by path and calls the loader with the YAML's `metadata`, whose
`question_set` names the task; the work lives in `peel.evaluation.local_data`, so the YAMLs hold no
file paths and work wherever peel is installed.
"""

from peel.evaluation.local_data import load_scenario_multiple_choice


def questions(question_set: str, **_metadata):
    return load_scenario_multiple_choice(question_set)
