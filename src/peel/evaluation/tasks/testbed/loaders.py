"""Dataset loaders named by the testbed task YAMLs (`custom_dataset: !function loaders.NAME`).

lm-eval imports this file by path; the real work lives in `peel.evaluation.local_data` so the
YAMLs hold no file paths and work wherever peel is installed.
"""

from peel.evaluation.local_data import load_testbed_multiple_choice


def testbed_forget(**_metadata):
    return load_testbed_multiple_choice("testbed_forget")


def testbed_retain(**_metadata):
    return load_testbed_multiple_choice("testbed_retain")
