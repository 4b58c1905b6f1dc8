"""tamper.json's arithmetic on hand-made curves: the worst-case envelope, step 0, recovery, the
summary, and reading both the old (bare curve) and the new shape."""

from __future__ import annotations

import json

import pytest

from peel.errors import PeelError
from peel.config import split_tasks
from peel.attacks.results import (
    document,
    read_tamper,
    step_zero,
    steps_to_recover,
    summarize,
    with_baseline,
    worst_case,
    write_tamper,
)

F, R = "wmdp_bio_robust", "mmlu"


def attack(name: str, rows: list[tuple], kind: str = "fine_tune", shots: int | None = None) -> dict:
    settings = {"few_shot": shots} if kind == "few_shot" else {"lr": 1e-4}
    return {"name": name, "kind": kind, "settings": settings,
            "curve": [{"step": step, F: forget, R: retain} for step, forget, retain in rows]}


SLOW = attack("slow", [(0, 0.26, 0.45), (10, 0.30, 0.45), (20, 0.34, 0.44), (30, 0.40, 0.44)])
FAST = attack("fast", [(0, 0.26, 0.45), (10, 0.38, 0.40), (20, 0.36, 0.38), (30, 0.33, 0.35)])
SHORT = attack("short", [(0, 0.26, 0.45), (10, 0.31, 0.46)])  # evaluated up to step 10 only
PROMPTED = attack("few_shot=5", [(0, 0.29, 0.45)], kind="few_shot", shots=5)
UNPROMPTED = attack("few_shot=0", [(0, 0.26, 0.45)], kind="few_shot", shots=0)
BASELINE = {F: 0.46, R: 0.45}


def test_worst_case_is_the_per_step_maximum_over_the_curves_that_have_the_step():
    envelope = worst_case([SLOW["curve"], FAST["curve"], SHORT["curve"], PROMPTED["curve"]])
    assert envelope == [
        {"step": 0, F: 0.29, R: 0.45},
        {"step": 10, F: 0.38, R: 0.46},
        {"step": 20, F: 0.36, R: 0.44},  # the fast attack fell back; the envelope is per step, not running
        {"step": 30, F: 0.40, R: 0.44},
    ]
    assert worst_case([]) == []


def test_step_zero_is_the_untouched_model_not_a_prompted_one():
    assert step_zero([PROMPTED, SLOW, UNPROMPTED], F) == 0.26
    assert step_zero([PROMPTED], F) == 0.29  # nothing unprompted: what there is
    assert step_zero([SLOW], "other_task") is None


@pytest.mark.parametrize("start, baseline, expected", [
    (0.26, 0.46, {"50": 10, "90": None}),  # 50% of 0.20 back = 0.36: step 10 (0.38); 90% = 0.44: never
    (0.26, 0.40, {"50": 10, "90": 30}),  # 90% of 0.14 = 0.386 -> step 30 (0.40)
    (0.26, 0.36, {"50": 10, "90": 10}),  # 90% of 0.10 = 0.35 -> step 10 (0.38)
    (0.26, 0.26, None),  # nothing was lost: null, never "recovered at step 0"
    (0.26, 0.20, None),  # unlearning raised the accuracy: nothing to regain
    (0.26, 0.26 + 1e-12, None),  # equal up to rounding is nothing lost either
])
def test_steps_to_recover_is_the_first_step_the_worst_case_regains_the_share(start, baseline, expected):
    envelope = worst_case([SLOW["curve"], FAST["curve"]])
    assert steps_to_recover(envelope, F, start, baseline) == expected


def test_recovery_at_exactly_the_share_counts_despite_rounding():
    # 0.25 + 0.5 * (0.45 - 0.25) is 0.35000000000000003 in floating point; 0.35 must count.
    assert steps_to_recover([{"step": 0, F: 0.25}, {"step": 5, F: 0.35}], F, 0.25, 0.45)["50"] == 5


def test_summary_names_the_strongest_attack_and_retain_there():
    summary = summarize([UNPROMPTED, PROMPTED, FAST, SLOW], [F, R], BASELINE)
    assert set(summary) == {F}  # the retain task gets no summary of its own
    assert summary[F] == {"step0": 0.26, "worst": 0.40, "worst_step": 30, "worst_attack": "slow",
                          "retain_at_worst": 0.44, "steps_to_recover": {"50": 10, "90": None}}
    without = summarize([FAST, SLOW], [F, R], None)
    assert without[F]["steps_to_recover"] is None and without[F]["worst"] == 0.40


@pytest.mark.parametrize("baseline", [0.26, 0.20])
def test_recovery_is_null_when_step_zero_is_at_or_above_the_baseline(baseline):
    summary = summarize([UNPROMPTED, FAST, SLOW], [F, R], {F: baseline, R: 0.45})
    assert summary[F]["step0"] == 0.26 and summary[F]["steps_to_recover"] is None


def test_ties_go_to_the_earliest_step_then_the_first_attack():
    first = attack("first", [(0, 0.2, 0.4), (10, 0.5, 0.3), (20, 0.5, 0.2)])
    second = attack("second", [(0, 0.2, 0.4), (10, 0.5, 0.1)])
    entry = summarize([first, second], [F, R], None)[F]
    assert (entry["worst_attack"], entry["worst_step"], entry["retain_at_worst"]) == ("first", 10, 0.3)


def test_tasks_split_into_forget_and_the_last_as_retain():
    assert split_tasks([F, R]) == ([F], R)
    assert split_tasks(["a", "b", R]) == (["a", "b"], R)
    assert split_tasks([F]) == ([F], None)


def test_document_round_trip_and_the_old_bare_curve(tmp_path):
    record = document("runs/x/model", [F, R], [UNPROMPTED, FAST, SLOW], BASELINE, pending=["later"])
    write_tamper(tmp_path, record)
    assert read_tamper(tmp_path) == json.loads(json.dumps(record))
    assert record["retain_task"] == R and record["pending"] == ["later"]

    old = tmp_path / "old"
    old.mkdir()
    (old / "tamper.json").write_text(json.dumps([{"step": 0, F: 0.27}, {"step": 10, F: 0.41}]))
    converted = read_tamper(old)
    assert [a["name"] for a in converted["attacks"]] == ["attack"]
    assert converted["worst_case"] == [{"step": 0, F: 0.27}, {"step": 10, F: 0.41}]
    assert converted["summary"][F]["steps_to_recover"] is None  # no baseline in the old file
    measured = with_baseline(converted, {F: 0.42})  # 50% back = 0.345, 90% = 0.405: both at step 10
    assert measured["summary"][F]["steps_to_recover"] == {"50": 10, "90": 10}
    assert with_baseline(record, {F: 0.99})["baseline"] == BASELINE  # a document's own baseline stays
    assert read_tamper(tmp_path / "missing") is None


@pytest.mark.parametrize("content", ['{"step": 0}', '[{"epoch": 1}]', '{"attacks": [{"name": "a", "curve": 3}]}', "[1,"])
def test_malformed_tamper_json_is_a_clear_error(tmp_path, content):
    (tmp_path / "tamper.json").write_text(content)
    with pytest.raises(PeelError, match="tamper.json"):
        read_tamper(tmp_path)
