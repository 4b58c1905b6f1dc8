"""Outputs that explain themselves: a pending attack grid and an old probe.json report cleanly,
the demo's summary says what it showed, and step-0 scores of attacks that train nothing are explained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peel.cli import main

RUN = Path(__file__).parent / "fixtures" / "report" / "runs" / "l2_rm10"


def test_a_grid_whose_attacks_are_all_pending_reports_as_pending(tmp_path, capsys):
    run = tmp_path / "queued"
    shutil.copytree(RUN, run)
    (run / "tamper.json").write_text(json.dumps({"target": "x", "tasks": ["testbed_forget", "testbed_retain"], "baseline": None,
                                                 "pending": ["lr=1e-4", "lr=1e-3"], "attacks": []}))
    assert main(["report", str(run), "--output", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "queued: pending, 2 of 2 attacks not finished yet (lr=1e-4, lr=1e-3)" in text
    assert sorted(path.name for path in tmp_path.iterdir()) == ["queued", "r.md", "r_plots"]


def test_a_probe_json_without_its_task_list_reports_and_a_failed_report_leaves_no_plots(tmp_path, monkeypatch):
    folder = tmp_path / "probed"
    folder.mkdir()
    rows = [{"layer": 0, "testbed_forget": 0.3}, {"layer": 1, "testbed_forget": 0.6}]
    (folder / "probe.json").write_text(json.dumps({"targets": {"m": {"probe": rows, "logit_lens": rows}},
                                                   "chance": {"testbed_forget": 0.25}}))
    assert main(["report", str(folder), "--output", str(tmp_path / "r.md")]) == 0
    assert "0.600 (L1)" in (tmp_path / "r.md").read_text() and (tmp_path / "r_plots" / "probed_probe.png").is_file()

    from peel import plots

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "plot_probe", broken)
    assert main(["report", str(folder), "--output", str(tmp_path / "s.md")]) == 1
    assert not (tmp_path / "s_plots").exists() and not (tmp_path / "s_plots.partial").exists()


def summary(unlearned_worst: float) -> dict:
    resistance = {"unlearned": {"step0": 0.255, "worst": unlearned_worst, "worst_step": 0, "worst_attack": "few_shot=5",
                                "retain_at_worst": 0.9, "steps_to_recover": {"50": 0, "90": 0}},
                  "filtered": {"step0": 0.23, "worst": 0.235, "worst_step": 10, "worst_attack": "lr=1e-3",
                               "retain_at_worst": 0.9, "steps_to_recover": None}}
    return {"models": {"base": {"forget_acc": 0.97, "retain_acc": 0.95}, "unlearned": {"forget_acc": 0.255, "retain_acc": 0.9},
                       "filtered": {"forget_acc": 0.23, "retain_acc": 0.9}}, "resistance": resistance}


def test_the_demo_summary_says_what_it_showed_from_its_numbers():
    from peel.commands.demo import finding

    hidden = finding(summary(0.96))
    assert "from 0.970 to 0.255" in hidden and "brings it back to 0.960" in hidden
    assert "filtered stays at 0.235" in hidden and hidden.endswith("hidden, not removed.")
    assert finding(summary(0.26)).endswith("it was removed.")


def test_step_zero_of_attacks_that_train_nothing_is_explained_with_the_kinds():
    from peel.attacks.results import document
    from peel.outputs.model_card import tamper_lines
    from peel.outputs.tamper_tables import STEP_ZERO_NOTE, tamper_section

    attacks = [{"name": "few_shot=5", "kind": "few_shot", "settings": {}, "curve": [{"step": 0, "testbed_forget": 0.94}]},
               {"name": "lr=1e-3", "kind": "fine_tune", "settings": {}, "curve": [{"step": 0, "testbed_forget": 0.25},
                                                                                   {"step": 10, "testbed_forget": 0.5}]}]
    record = document("m", ["testbed_forget"], attacks, {"testbed_forget": 0.97})
    text = "\n".join(tamper_section({"m": record}, []))
    assert "(kinds: few_shot (1), fine_tune (1))" in text and STEP_ZERO_NOTE in text
    assert STEP_ZERO_NOTE in "\n".join(tamper_lines(record))
    trained = document("m", ["testbed_forget"], attacks[1:], {"testbed_forget": 0.97})
    assert STEP_ZERO_NOTE not in "\n".join(tamper_section({"m": trained}, []))


def test_the_tamper_dry_run_names_the_baseline_the_run_will_find(tmp_path, monkeypatch, capsys, tiny_models):
    """A run folder (such as RUN/distill) whose original has no cached evaluation and whose eval.json
    has no baseline: the dry run says recovery will not be measured, as the run will find."""
    from peel.config import load_config, save_config

    monkeypatch.setenv("PEEL_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(tiny_models["llama"], run / "model")
    save_config(load_config(None, [f"model.name_or_path={tiny_models['llama']}", "tamper.tasks=[testbed_forget]",
                                   "tamper.data.path=testbed:tamper"]), run / "config.yaml")
    assert main(["tamper", str(run), "--dry-run"]) == 0
    assert "baseline: none known for testbed_forget, so recovery will not be measured; give --baseline" in capsys.readouterr().out
    (run / "eval.json").write_text(json.dumps({"accuracy": {"testbed_forget": 0.3}, "baseline": {"accuracy": {"testbed_forget": 0.9}}}))
    assert main(["tamper", str(run), "--dry-run"]) == 0
    assert f"baseline: testbed_forget 0.9000 (from the eval.json of {run}" in capsys.readouterr().out


def test_a_tamper_output_folder_of_a_bare_model_joins_the_report(tmp_path):
    from peel.attacks.results import document, write_tamper

    attacks = [{"name": "lr=1e-3", "kind": "fine_tune", "settings": {}, "curve": [{"step": 0, "testbed_forget": 0.24},
                                                                                 {"step": 10, "testbed_forget": 0.26}]}]
    write_tamper(tmp_path / "filtered", document("testbed:filtered", ["testbed_forget"], attacks, None))
    assert main(["report", str(RUN), str(tmp_path / "filtered"), "--output", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "| filtered | 1 | 0.2400 | 0.2600 (step 10) | lr 1e-3 |" in text
    assert text.count("\n## ") == text.count("\n## Tampering attack") + 2  # one family (l2_rm10's), tampering, runs


def test_a_distilled_student_reports_as_a_student_and_leaves_other_headings_alone(tmp_path):
    import yaml

    from peel.outputs.report import read_run, render

    runs = sorted((Path(__file__).parent / "fixtures" / "report" / "runs").iterdir())
    before = [line for line in render([read_run(run) for run in runs]).splitlines() if line.startswith("## ")]
    student = tmp_path / "distill"
    shutil.copytree(RUN, student)
    config = yaml.safe_load((student / "config.yaml").read_text())
    config["distill"] = {"run": str(RUN.resolve()), "alpha": 0.8, "steps": 300, "lr": 1e-3, "with_forget": False}
    (student / "config.yaml").write_text(yaml.safe_dump(config))
    (student / "metrics.jsonl").write_text('{"step": 1, "distill_loss": 2.0}\n')
    (student / "run.json").write_text('{"status": "completed", "total_steps": 300}')
    text = render([read_run(run) for run in [*runs, student]])
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert [heading for heading in headings if "distilled" not in heading] == before  # no other heading moved
    assert "## distilled students of l2_rm10 (teacher: its model/; alpha: the share re-initialised)" in headings
    row = next(line for line in text.splitlines() if line.startswith("| distill |"))
    assert row.startswith("| distill | - | 0.8 | 300 | 1e-3 | False | 300 |") and "{" not in row


def test_unlearn_and_distill_end_by_saying_what_they_measured(tmp_path):
    from peel.runs.evaluations import measured_line, write_evaluation

    assert measured_line(tmp_path).startswith("measured: nothing (eval.tasks is empty)")
    write_evaluation(tmp_path, "m", {"accuracy": {"testbed_forget": 0.255, "testbed_retain": 0.9}},
                     baseline={"accuracy": {"testbed_forget": 0.97}})
    assert measured_line(tmp_path).startswith("measured: testbed_forget 0.2550 (baseline 0.9700), testbed_retain 0.9000;")


def test_distill_evaluates_a_scenario_run_on_its_tasks_when_the_run_evaluated_nothing():
    from peel.commands.distill import evaluated_by_default
    from peel.config import load_config

    silent = load_config(None, ["model.name_or_path=testbed:base", "eval.tasks=[]"])
    assert evaluated_by_default(silent).eval.tasks == ["testbed_forget", "testbed_retain"]
    chosen = load_config(None, ["model.name_or_path=testbed:base", "eval.tasks=[testbed_forget]"])
    assert evaluated_by_default(chosen).eval.tasks == ["testbed_forget"]
    real = load_config(None, ["model.name_or_path=EleutherAI/deep-ignorance-unfiltered"])
    assert evaluated_by_default(real).eval.tasks == []  # a real model: no guess


def probe_document() -> dict:
    rows = [{"layer": 0, "testbed_forget": 0.9}, {"layer": 1, "testbed_forget": 0.4}]
    lens = [{"layer": 0, "testbed_forget": 0.3}, {"layer": 1, "testbed_forget": 0.5}]
    return {"tasks": ["testbed_forget"], "chance": {"testbed_forget": 0.25},
            "targets": {"base": {"probe": rows, "logit_lens": lens},
                        "unlearned": {"probe": rows, "logit_lens": lens, "depth": [{"layer": 0, "testbed_forget": 0.8},
                                                                                   {"layer": 1, "testbed_forget": 0.3}]}}}


def test_peel_probe_prints_the_best_layers_its_tables_show():
    from peel.outputs.probe_tables import best_lines, probe_table

    lines = best_lines(probe_document())
    assert lines == ["base testbed_forget: probe 0.900 (L0), lens 0.500 (L1), chance 0.250",
                     "unlearned testbed_forget: probe 0.900 (L0), lens 0.500 (L1), depth 0.800 (L0), chance 0.250"]
    table = "\n".join(probe_table(probe_document()))
    assert "| unlearned | 0.900 (L0) | 0.500 (L1) | 0.800 (L0) |" in table


def test_probe_png_keeps_one_colour_per_model_in_every_row(tmp_path, monkeypatch):
    from peel import plots

    drawn = []
    pyplot = plots._pyplot()
    original = pyplot.Axes.plot

    def plot(axis, *args, **kwargs):
        drawn.append((axis.get_title(), kwargs.get("label"), kwargs.get("color")))
        return original(axis, *args, **kwargs)

    monkeypatch.setattr(pyplot.Axes, "plot", plot)
    plots.plot_probe(probe_document(), tmp_path / "probe.png")
    colours = {}
    for _, label, colour in drawn:
        colours.setdefault(label, set()).add(colour)
    assert len(colours["unlearned"]) == 1 and len(colours["base"]) == 1 and colours["base"] != colours["unlearned"]


def test_attacks_read_as_their_settings_and_keep_their_file_safe_names():
    from peel.attacks.results import readable
    from peel.outputs.tamper_tables import resistance_table

    benign = {"name": "adapter=full,lr=0.001,path=testbedretain", "kind": "fine_tune",
              "settings": {"adapter": "full", "lr": 0.001, "data.path": "testbed:retain"},
              "curve": [{"step": 0, "testbed_forget": 0.25}, {"step": 10, "testbed_forget": 0.9}]}
    assert readable(benign, "testbed:retain") == "full, lr 1e-3, on testbed:retain (benign)"
    assert readable(benign) == "full, lr 1e-3, on testbed:retain"
    assert readable({"name": "few_shot=5", "settings": {"few_shot": 5}}) == "5-shot prompt"
    assert readable({"name": "kind=quantize,bits=4", "settings": {"bits": 4}}) == "quantize, bits 4"
    assert readable({"name": "attack", "settings": {}}) == "attack"
    from peel.attacks.results import document

    record = document("m", ["testbed_forget"], [benign], {"testbed_forget": 0.97})
    assert record["summary"]["testbed_forget"]["worst_attack"] == benign["name"]  # the record keeps the name
    row = next(line for line in resistance_table({"m": record}, {"m": "testbed:retain"}) if line.startswith("| m |"))
    assert "| full, lr 1e-3, on testbed:retain (benign) |" in row
