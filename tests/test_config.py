import pytest

from peel.config import Config, LayerRange, apply_overrides, help_lines, load_config, save_config
from peel.errors import PeelError


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("unlearn:\n  layers: {start: 28, end: 16, step: 4}\n  remove_coef: 50\ntrain:\n  lr: 5e-4\n")
    config = load_config(path, ["unlearn.retain_coef=7", "unlearn.layers.step=2", "data.forget.text_field=body"])
    assert config.unlearn.layers == LayerRange(start=28, end=16, step=2)
    assert config.unlearn.remove_coef == 50.0 and config.unlearn.retain_coef == 7.0
    assert config.train.lr == 5e-4 and config.train.global_batch_size == 32  # untouched keys keep defaults
    assert config.data.forget.text_field == "body" and config.data.forget.path == "testbed:forget"
    assert apply_overrides(config, ["unlearn.layers=[3, 1]"]).unlearn.layers == [3, 1]
    saved = tmp_path / "saved.yaml"
    save_config(config, saved)  # the run folder's config.yaml reloads to the same config
    assert load_config(saved) == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("unlearn.bogus=1", "unknown config key 'unlearn.bogus'"),
        ("bogus.key=1", "unknown config key 'bogus'"),
        ("train.lr=fast", "'train.lr' got 'fast'; accepted: a finite number"),
        ("train.seed=1.5", "'train.seed' got 1.5; accepted: an integer"),
        ("unlearn.adapter=qlora", "'unlearn.adapter' got 'qlora'; accepted: lora, full"),
        ("unlearn.retain_layers=some", "accepted: list of int or all | target"),
        ("train.gradient_checkpointing=maybe", "accepted: true | false or selective"),
        ("no_equals_sign", "dotted.key=value"),
    ],
)
def test_config_errors_name_the_key_and_accepted_values(override, message):
    with pytest.raises(PeelError, match=message.replace("[", r"\[").replace("|", r"\|")):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(PeelError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(PeelError, match="mapping"):
        load_config(bad)


def test_every_key_has_help():
    lines = help_lines(Config())
    keys = [line.split(" = ")[0].strip() for line in lines]
    assert "unlearn.grad_filter" in keys and "train.global_batch_size" in keys and "data.forget.path" in keys
    assert all(line.split("\n")[1].strip() for line in lines)


def test_base_files_are_merged_under_the_config(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {lr: 0.001, seed: 3}\nunlearn: {remove_coef: 5}\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\ntrain: {lr: 0.002}\n")
    config = load_config(tmp_path / "run.yaml")
    assert (config.train.lr, config.train.seed, config.unlearn.remove_coef) == (0.002, 3, 5.0)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(PeelError, match="names itself"):
        load_config(tmp_path / "loop.yaml")


def test_paths_in_a_config_file_are_relative_to_it_like_base(tmp_path, monkeypatch):
    """data paths, keyword lists and local models resolve against the config file's folder (and a
    base file's against its own); hub ids, scenario names and command-line overrides do not."""
    experiments = tmp_path / "experiments"
    (experiments / "data").mkdir(parents=True)
    (experiments / "model").mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text(
        "data: {retain: {path: retain.jsonl}, chat: {path: HuggingFaceH4/ultrachat_200k}}\n"
        "tamper: {data: {path: ../experiments/data/tamper.txt}, grid: [{lr: 1.0e-4, data: {path: benign.jsonl}}, {lr: 2.0e-4}]}\n"
    )
    (experiments / "run.yaml").write_text(
        "base: ../shared/base.yaml\n"
        "model: {name_or_path: model}\n"
        "data: {forget: {path: data/forget.jsonl, keywords: words.txt}}\n"
    )
    monkeypatch.chdir(tmp_path / "shared")  # somewhere else than the config file
    config = load_config(experiments / "run.yaml")
    assert config.model.name_or_path == str(experiments / "model")  # a folder that exists beside it
    assert config.data.forget.path == str(experiments / "data" / "forget.jsonl")  # need not exist yet
    assert config.data.forget.keywords == str(experiments / "words.txt")
    assert config.data.retain.path == str(tmp_path / "shared" / "retain.jsonl")  # the base's, against the base
    assert config.tamper.data.path == str(experiments / "data" / "tamper.txt")
    assert config.tamper.grid[0]["data"]["path"] == str(tmp_path / "shared" / "benign.jsonl")
    assert config.data.chat.path == "HuggingFaceH4/ultrachat_200k"  # a hub id stays one

    overridden = load_config(experiments / "run.yaml", ["data.forget.keywords=mine.txt", "model.name_or_path=testbed:base"])
    assert overridden.data.forget.keywords == str(tmp_path / "shared" / "mine.txt")  # the shell's path: where peel runs
    assert overridden.model.name_or_path == "testbed:base"

    # The run's config.yaml holds them absolute, so it reads the same from anywhere (a sweep's job
    # runs `peel unlearn RUN/config.yaml`; resume and peel tamper RUN read it as the run's record).
    save_config(overridden, tmp_path / "saved.yaml")
    monkeypatch.chdir(experiments)
    assert load_config(tmp_path / "saved.yaml") == overridden
    assert load_config(tmp_path / "saved.yaml", relative_to_file=False) == overridden


def test_a_missing_relative_keyword_file_is_named_where_it_was_looked_for(tmp_path):
    from peel.unlearning.masks import read_keywords

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "c.yaml").write_text("data: {forget: {keywords: lists/missing.txt}}\n")
    config = load_config(tmp_path / "configs" / "c.yaml")
    with pytest.raises(PeelError, match=str(tmp_path / "configs" / "lists" / "missing.txt")):
        read_keywords(config.data.forget.keywords)


def test_a_run_folders_config_keeps_the_meaning_of_its_paths(tmp_path, monkeypatch):
    """Older runs wrote the paths they were given, relative to where peel ran: read as the run's
    record (resume, peel tamper RUN) they still mean that, not a path inside the run folder."""
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data: {forget: {path: data/forget.jsonl}}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(run / "config.yaml", relative_to_file=False).data.forget.path == str(tmp_path / "data" / "forget.jsonl")


def test_a_data_section_given_as_a_path_is_its_path(tmp_path, monkeypatch):
    """`distill.data=PATH` means `distill.data.path=PATH`, on the command line and in a file, for every data section."""
    monkeypatch.chdir(tmp_path)
    short = load_config(None, ["distill.data=texts.jsonl", "data.forget=testbed:forget", "tamper.data=testbed:tamper"])
    long = load_config(None, ["distill.data.path=texts.jsonl", "data.forget.path=testbed:forget", "tamper.data.path=testbed:tamper"])
    assert short == long and short.distill.data.path == str(tmp_path / "texts.jsonl")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("distill: {data: more.jsonl}\n")
    assert load_config(tmp_path / "sub" / "c.yaml").distill.data.path == str(tmp_path / "sub" / "more.jsonl")


def test_a_scenario_model_brings_its_data_tasks_and_float32(tmp_path):
    """`model.name_or_path: testbed:base` alone (or `peel tamper testbed:filtered`) is not attacked
    or evaluated with WMDP: the scenario's text, tasks and dtype apply wherever nothing else is set."""
    from peel.runs.targets import resolve_target

    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: testbed:base}\ntamper: {tasks: [testbed_forget]}\n")
    config = load_config(path)
    assert config.eval.tasks == ["testbed_forget", "testbed_retain"] and config.tamper.tasks == ["testbed_forget"]
    assert config.tamper.data.path == "testbed:tamper" and config.train.dtype == "float32"
    target = resolve_target("testbed:filtered", ["train.dtype=bfloat16"])
    assert target.config.tamper.tasks == ["testbed_forget", "testbed_retain"] and target.config.train.dtype == "bfloat16"
    assert load_config(None, []).tamper.tasks == ["wmdp_bio_robust", "mmlu"]  # any other model: the real setting
