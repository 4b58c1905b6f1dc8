"""`peel report` from fixture run folders: the rendered tables, state labels, plots and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from peel.cli import main
from peel.errors import PeelError
from peel.outputs.report import read_run, state_label

FIXTURES = Path(__file__).parent / "fixtures" / "report"
RUNS = sorted(str(path) for path in (FIXTURES / "runs").iterdir())
SEED_BASELINE = {"wmdp_bio_robust": 0.4297, "mmlu": 0.4510}


def test_report_matches_the_expected_markdown_and_draws_plots(tmp_path):
    output = tmp_path / "report.md"
    assert main(["report", *RUNS, "--output", str(output)]) == 0
    assert output.read_text() == (FIXTURES / "expected.md").read_text()
    plots = tmp_path / "report_plots"
    assert {path.name for path in plots.iterdir()} >= {"tamper.png", "l2_rm50_losses.png", "kl_lr1e-4_phase_accuracy.png"}


@pytest.mark.parametrize(
    "forget, retain, expected",
    [  # rows of the seed log and the labels its notes gave them
        (0.2684, 0.4437, "forget dropped, retain held"),  # L2 run 5
        (0.2535, 0.2540, "both near chance"),  # L2 run 6, "MMLU collapsed"
        (0.4251, 0.4378, "both near baseline"),  # KL run 18, "No effect"
        (0.3134, 0.3186, "both partial"),  # KL run 26, "Twin Degradation"
        (0.4297, 0.3000, "retain dropped, forget held"),
    ],
)
def test_state_labels_on_the_seed_log(forget, retain, expected):
    accuracy = {"wmdp_bio_robust": forget, "mmlu": retain}
    assert state_label(accuracy, SEED_BASELINE, "wmdp_bio_robust", "mmlu") == expected


def test_a_folder_without_config_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--output", str(tmp_path / "report.md")]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err


def test_a_corrupt_metrics_line_is_named(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "runs" / "l2_rm10", run)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 9, "forget_lo')
    with pytest.raises(PeelError, match=r"metrics.jsonl:9 is not valid JSON"):
        read_run(run)


def test_a_corrupt_eval_json_is_named(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "runs" / "l2_rm10", run)
    (run / "eval.json").write_text("{")
    with pytest.raises(PeelError, match=r"eval.json is not valid JSON"):
        read_run(run)


def test_correct_prob_and_update_rank_get_columns_only_where_present(tmp_path):
    import json

    for name, probability, rank in (("with", 0.1355, {"mean_stable_rank": 1.3, "mean_effective_rank": 2189.4, "matrices": 96}),
                                    ("without", None, None)):
        run = tmp_path / name
        shutil.copytree(FIXTURES / "runs" / "l2_rm10", run)
        record = json.loads((run / "eval.json").read_text())
        if probability is not None:
            record["correct_prob"] = {"wmdp_bio_robust": probability}
            record["baseline"]["correct_prob"] = {"wmdp_bio_robust": 0.2008}
        (run / "eval.json").write_text(json.dumps(record))
        status = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**status, **({"update_rank": rank} if rank else {})}))
    output = tmp_path / "report.md"
    assert main(["report", str(tmp_path / "with"), str(tmp_path / "without"), "--output", str(output)]) == 0
    lines = output.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Run"))
    assert "| WMDP Bio Robust p(correct) | Stable rank | Effective rank |" in header
    assert "| 0.2008 | - | - |" in next(line for line in lines if line.endswith("| Baseline |"))
    assert "| 0.1355 | 1.30 | 2189.40 |" in next(line for line in lines if line.startswith("| with "))
    assert "| 0.4479 |  |  |  |" in next(line for line in lines if line.startswith("| without "))


def test_recovery_reads_n_a_when_step_zero_is_at_or_above_the_baseline(tmp_path):
    """A model that lost nothing (step 0 0.2696 against a baseline of 0.2) has nothing to recover:
    its tamper.json says null and the report n/a, never "step 0"."""
    import json

    run = tmp_path / "l2_rm50"
    shutil.copytree(FIXTURES / "runs" / "l2_rm50", run)
    record = json.loads((run / "tamper.json").read_text())
    record["baseline"]["wmdp_bio_robust"] = 0.2
    (run / "tamper.json").write_text(json.dumps(record))
    assert read_run(run).tamper["summary"]["wmdp_bio_robust"]["steps_to_recover"] is None
    output = tmp_path / "report.md"
    assert main(["report", str(run), "--output", str(output)]) == 0
    row = next(line for line in output.read_text().splitlines() if line.startswith("| l2_rm50 | 4 |"))
    assert "| n/a | n/a |" in row and "step 0 |" not in row.split("|")[6]


def test_runs_star_skips_what_is_not_a_run_and_expands_a_sweep_folder(tmp_path, capsys):
    """`peel report runs/*` (the README's command) on a runs/ that holds a sweep folder, a stray
    file and a peel eval folder: the sweep's runs are read, the others skipped with a note each."""
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURES / "runs" / "l2_rm10", runs / "l2_rm10")
    sweep = runs / "kl_sweep"
    shutil.copytree(FIXTURES / "runs" / "kl_lr1e-4", sweep / "lr=1e-4")
    shutil.copytree(FIXTURES / "runs" / "kl_lr3e-4", sweep / "lr=3e-4")
    (sweep / "jobs").mkdir()
    (sweep / "sweep.json").write_text('{"runs": [{"name": "lr=1e-4", "overrides": ["train.lr=1e-4"]}, '
                                      '{"name": "lr=3e-4", "overrides": ["train.lr=3e-4"]}]}')
    (runs / "notes.txt").write_text("a stray file")
    (runs / "base_eval").mkdir()
    shutil.copy(FIXTURES / "runs" / "l2_rm10" / "eval.json", runs / "base_eval" / "eval.json")
    output = tmp_path / "report.md"
    assert main(["report", *sorted(str(path) for path in runs.iterdir()), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert f"skipping {runs / 'notes.txt'}: it is a file, not a run folder" in out
    assert f"skipping {runs / 'base_eval'}: it is not a run folder (no config.yaml; peel eval output)" in out
    assert f"{sweep}: a sweep folder, reading its 2 run(s)" in out
    report = output.read_text()
    assert all(f"| {name} " in report for name in ("l2_rm10", "lr=1e-4", "lr=3e-4"))
    assert "notes.txt" not in report and "base_eval" not in report


def test_nothing_to_report_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["report", str(tmp_path / "notes.txt"), "--output", str(tmp_path / "report.md")]) == 2
    assert "nothing to report" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()
