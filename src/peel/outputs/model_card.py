"""README.md model cards for a run's adapter/ and model/: what the weights are, how peel made them,
and what they measured.

peft's save_pretrained leaves a blank template naming the base model by its local path; peel
writes over it once the run completes and again whenever peel eval or peel tamper adds results to
the run folder. Everything comes from the run folder's own files (config.yaml, run.json,
eval.json, tamper.json), so a card can be rebuilt anywhere. Local paths are shown by their last
part only: a card travels with the weights, the machine they were made on does not.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from peel.attacks.results import label_of, read_tamper, with_baseline
from peel.outputs.tamper_tables import STEP_ZERO_NOTE, trains_nothing
from peel.runs.evaluations import read_evaluation
from peel.unlearning.methods import described, options_on
from peel.runs.folder import CARD_FILE, CONFIG_FILE, RUN_FILE, read_json

# Folder of a run -> the library that loads it and how (BASE: the base model).
KINDS = {
    "adapter": ("peft", 'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("BASE"), "adapter")'),
    "model": ("transformers", 'AutoModelForCausalLM.from_pretrained("model")'),
}


def shown(name: str | None) -> str:
    """A hub id or scenario name as it is; a local path by its last part (no absolute paths)."""
    if name is None:
        return "none"
    path = Path(name).expanduser()
    if name.startswith((".", "/", "~")) or path.exists():
        return path.name
    return name


def hub_id(name: str) -> str | None:
    """`name` when it reads as a hub id (owner/model, not a local path): the card's base_model."""
    if name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or ":" in name:
        return None
    return name if name.count("/") == 1 else None


def method_rows(config: dict, layers: list | None) -> list[tuple[str, str]]:
    """The settings that define the result, one (setting, value) row each."""
    model, data, unlearn, train = (config.get(key, {}) for key in ("model", "data", "unlearn", "train"))
    lora = unlearn.get("lora", {})
    adapter = unlearn.get("adapter")
    if adapter == "lora":
        adapter_text = f"LoRA rank {lora.get('rank')}, alpha {lora.get('alpha')}, modules {lora.get('target_modules')}"
    else:
        adapter_text = "full fine-tuning: only the target layer trains in its phase"
    chat = data.get("chat") or {}
    retain = shown(data.get("retain", {}).get("path")) + (f" ({data['retain']['name']})" if data.get("retain", {}).get("name") else "")
    if chat.get("path"):
        retain += f", with {chat.get('fraction')} of it chat from {shown(chat['path'])} (template: {chat.get('template') or 'the tokenizer'})"
    optimizer = train.get("optimizer")
    if optimizer == "muon":  # Muon at its own rate for the 2-D matrices, AdamW at lr for the rest
        optimizer += f" (lr {train.get('muon_lr')}, momentum {train.get('muon_momentum')}) with adamw for the rest"
    rows = [
        ("base model", shown(model.get("name_or_path"))),
        ("adapter", adapter_text),
        ("target layers, back to front", ", ".join(map(str, layers)) if layers else str(unlearn.get("layers"))),
        ("forget data", f"{shown(data.get('forget', {}).get('path'))}"
                        + (f", keyword-masked ({shown(data['forget']['keywords'])})" if data.get("forget", {}).get("keywords") else "")),
        ("retain data", retain),
        ("examples per phase, tokens each", f"{data.get('num_examples') or 'all'}, {data.get('max_length')}"),
        ("forget loss", f"{described('forget_loss', unlearn)}, coefficient {unlearn.get('remove_coef')}"),
        ("retain loss", f"{described('retain_loss', unlearn)}, coefficient {unlearn.get('retain_coef')} ramped {unlearn.get('retain_ramp')}"),
        ("gradient filter", described("grad_filter", unlearn)),
        ("adversary (tamper resistance)", described("adversary", unlearn)),
        *((key.replace("_", " "), text) for key, text in options_on(unlearn)),
        ("L2-SP coefficient", str(unlearn.get("l2sp_coef"))),
        ("optimizer", f"{optimizer}, lr {train.get('lr')} ({train.get('lr_scheduler')}, warmup "
                      f"{train.get('warmup_ratio')}), gradient clipping {train.get('max_grad_norm') or 'off'}"),
        ("batch", f"{train.get('global_batch_size')} examples per step ({train.get('per_device_batch_size')} per device), "
                  f"{train.get('epochs_per_layer')} epoch(s) per layer, {train.get('dtype')}, seed {train.get('seed')}"),
    ]
    return rows


def evaluation_lines(evaluation: dict | None) -> list[str]:
    if not evaluation:
        return ["Not evaluated yet: `peel eval RUN --tasks ...` adds the accuracies here."]
    baseline = (evaluation.get("baseline") or {}).get("accuracy", {})
    lines = ["| task | base model | this model |", "|---|---|---|"]
    for task, accuracy in evaluation["accuracy"].items():
        before = f"{baseline[task]:.4f}" if task in baseline else "n/a"
        lines.append(f"| {task} | {before} | {accuracy:.4f} |")
    limit = evaluation.get("limit")
    lines += ["", f"lm-eval {evaluation.get('lm_eval_version', '')}, {evaluation.get('num_fewshot', 0)}-shot"
              + (f", first {limit} documents per task" if limit else ", every document") + " (eval.json)."]
    return lines


def tamper_lines(document: dict | None, retain_text: str | None = None) -> list[str]:
    if not document or not document.get("summary"):
        return ["Not attacked yet: `peel tamper RUN` adds the worst case over its attack grid here."]
    lines = ["| task | step 0 | worst case | by attack, at step | steps to recover |", "|---|---|---|---|---|"]
    for task, row in document["summary"].items():
        recovery = row.get("steps_to_recover") or {}
        recovered = ", ".join(f"{share}: {'n/a' if step is None else step}" for share, step in recovery.items()) or "n/a"
        lines.append(f"| {task} | {row['step0']:.4f} | {row['worst']:.4f} | {label_of(document, row['worst_attack'], retain_text)}, {row['worst_step']} | {recovered} |")
    names = [attack["name"] for attack in document["attacks"]]
    lines += ["", f"{len(names)} attack(s): {', '.join(names)} (tamper.json)."]
    if any(trains_nothing(attack) for attack in document["attacks"]):
        lines[-1] += f" {STEP_ZERO_NOTE}"
    if document.get("pending"):
        lines[-1] += f" Pending: {', '.join(document['pending'])}."
    return lines


UNLEARNING = ("(`peel unlearn`): for each target layer, from the back of the model to the front, the model's hidden "
              "state at that layer, passed through the original model's remaining layers, is trained away from the "
              "forget data's predictions (the forget loss below), while a retain loss keeps the model close to the "
              "original on the retain data.")


def distillation_rows(config: dict, record: dict) -> list[tuple[str, str]]:
    """What made a distilled student: its teacher, the mix it started from, its text and steps."""
    settings = config.get("distill", {})
    data = settings.get("data") or config.get("data", {}).get("retain", {})
    if data == "generated":  # texts the original model wrote (distill.generated)
        sampling = settings.get("generated") or {}
        text = (f"{record.get('generated_texts', sampling.get('num_texts'))} texts the original model wrote (temperature "
                f"{sampling.get('temperature')}, up to {sampling.get('max_new_tokens')} new tokens"
                + (f", {record['generated_dropped']} with a forget keyword dropped" if record.get("generated_dropped") else "") + ")")
    else:
        text = shown(data.get("path"))
    text += " and the run's forget text" if settings.get("with_forget") else ""
    return [
        ("teacher (the unlearned model)", shown(str(Path(record.get("teacher") or settings.get("run") or "").parent))
         if record.get("teacher") else shown(settings.get("run"))),
        ("initial student", f"(1 - {settings.get('alpha')}) x the teacher + {settings.get('alpha')} x a fresh initialisation"),
        ("distillation", f"{settings.get('steps')} steps of KL(teacher || student) on {text}, lr {settings.get('lr')} "
                         f"({settings.get('lr_scheduler')}), {settings.get('global_batch_size')} texts per step, seed {settings.get('seed')}"),
    ]


def card_text(kind: str, config: dict, record: dict | None, evaluation: dict | None, tamper: dict | None) -> str:
    """The card of a run's `kind` folder (model, adapter). `record` is the run's run.json: it says
    whether the folder holds an unlearned model or a student distilled from one (its teacher)."""
    record = record or {}
    base = config.get("model", {}).get("name_or_path", "")
    library, loading = KINDS[kind]
    distilled = "teacher" in record
    front = {"library_name": library, "tags": ["peel", "unlearning", *(["distillation"] if distilled else [])]}
    if hub_id(base):
        front = {"base_model": base, **front}
    if kind == "adapter":
        what = "a LoRA adapter"
    elif distilled:
        what = "a student distilled from an unlearned model"
    else:
        what = "the unlearned model" + (", adapters merged" if config.get("unlearn", {}).get("adapter") == "lora" else "")
    if distilled:
        story = (f"This folder holds {what} (`peel distill`): its weights started as a mix of the teacher's and a fresh "
                 "initialisation, then it learned the teacher's next-token distributions (the distillation rows below). "
                 f"The teacher is {shown(base)} after peel's sequential back-to-front unlearning {UNLEARNING}")
    else:
        story = f"This folder holds {what}: {shown(base)} after peel's sequential back-to-front unlearning {UNLEARNING}"
    rows = [*(distillation_rows(config, record) if distilled else []), *method_rows(config, record.get("layers"))]
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {shown(base)}, unlearned by peel" + (", then distilled" if distilled else ""),
        "",
        story,
        "",
        f"Load it with {library}: `{loading.replace('BASE', hub_id(base) or f'<the folder of {shown(base)}>')}`.",
        "",
        "## Method",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        "Every setting is in the run folder's config.yaml.",
        "",
        "## Evaluation",
        "",
        *evaluation_lines(evaluation),
        "",
        "## Tamper attacks",
        "",
        *tamper_lines(tamper, ((config.get("data") or {}).get("retain") or {}).get("path")),
    ]
    if config.get("notes"):
        lines += ["", "## Notes", "", str(config["notes"])]
    return "\n".join(lines) + "\n"


def write_model_cards(run: str | Path, suffix: str = "") -> list[Path]:
    """README.md in the run's adapter/ and model/ (or their `suffix` forms, e.g. `.partial` before
    they move into place), from what the run folder holds now; the folders it writes."""
    run = Path(run)
    folders = [(kind, run / f"{kind}{suffix}") for kind in KINDS if (run / f"{kind}{suffix}").is_dir()]
    if not folders or not (run / CONFIG_FILE).is_file():
        return []
    config = yaml.safe_load((run / CONFIG_FILE).read_text()) or {}
    record = read_json(run / RUN_FILE, "run.json as peel unlearn writes it") if (run / RUN_FILE).is_file() else {}
    evaluation = read_evaluation(run)
    tamper = read_tamper(run)
    if tamper is not None and evaluation and evaluation.get("baseline"):
        tamper = with_baseline(tamper, evaluation["baseline"].get("accuracy"))
    written = []
    for kind, folder in folders:
        text = card_text(kind, config, record, evaluation, tamper)
        partial = folder / f"{CARD_FILE}.{os.getpid()}.tmp"
        partial.write_text(text)
        os.replace(partial, folder / CARD_FILE)  # whole or not at all
        written.append(folder / CARD_FILE)
    return written
