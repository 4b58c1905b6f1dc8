"""Tiny models step on one thread: the demo on the testbed, and the tests with their CLI subprocesses."""

from __future__ import annotations

import os

import torch


def test_the_demo_steps_the_testbed_on_one_thread_unless_told(monkeypatch):
    from peel.commands.demo import one_thread_for_the_testbed

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        one_thread_for_the_testbed("elements")  # SmolLM2 is left to torch's default
        assert torch.get_num_threads() == 2
        one_thread_for_the_testbed("testbed")
        assert torch.get_num_threads() == (2 if torch.cuda.is_available() else 1)
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit choice wins
        one_thread_for_the_testbed("testbed")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cli_subprocesses_of_the_tests_inherit_a_thread_count():
    """conftest.py sets OMP_NUM_THREADS (1, unless the caller chose), so `python -m peel` children do not take every core."""
    assert os.environ.get("OMP_NUM_THREADS", "").isdigit()
