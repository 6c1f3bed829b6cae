"""Model cards in the Hugging Face format (``README.md``: YAML metadata, then markdown), from real records.

    from tuneloop.export.model_card import write_model_card
    write_model_card("exported/support-bot", "runs/support-bot", export_format="safetensors")

``export`` writes one into every export directory, and a registry version can call
:func:`build_model_card` on the same run. Nothing in a card is typed by hand: each section is read
from a file the pipeline wrote, and a section whose file is missing says so instead of guessing:

* base model and licence: the run's ``tuneloop_base.json`` / recipe, looked up in the model catalog;
* training data provenance: the ``manifest.json`` and ``report.json`` that ``data prepare`` wrote beside
  the recipe's training file (input files with SHA-256, record counts, PII redactions, splits);
* training procedure: ``recipe.resolved.yaml`` and ``summary.json``;
* evaluation: the newest ``eval.json`` whose model is this run (in the run directory, beside it, or
  in a sibling of its parent, as the quickstart lays them out), with the baseline deltas and CIs;
* bias: the newest ``audit.json`` for this run, found the same way;
* intended use and limits, written from the above.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from tuneloop.models import catalog
from tuneloop.paths import write_text_atomic

CARD_FILE = "README.md"
# SPDX-style ids the Hugging Face hub knows, for the catalog's licence names.
HF_LICENSES = {"apache-2.0": "apache-2.0", "mit": "mit"}
QUALITY_METRICS = ("accuracy", "f1", "precision", "recall", "exact_match", "fact_accuracy", "rougeL", "bleu", "chrf")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _same_model(reference, run_dir: Path) -> bool:
    try:
        return Path(str(reference)).resolve() == run_dir.resolve()
    except (OSError, ValueError):
        return False


def find_results(run_dir: Path, filename: str) -> tuple[Path, dict] | None:
    """The newest ``filename`` (eval.json or audit.json) whose ``model`` is ``run_dir``."""
    candidates = [run_dir / filename, *run_dir.glob(f"*/{filename}"), *run_dir.parent.glob(f"*/{filename}"),
                  *run_dir.parent.parent.glob(f"*/{filename}")]
    found = []
    for path in {c.resolve() for c in candidates if c.is_file()}:
        data = _read_json(path)
        if data and _same_model(data.get("model"), run_dir):
            found.append((path.stat().st_mtime, path, data))
    return max(found, key=lambda item: item[0])[1:] if found else None


def _base_model(run_dir: Path, recipe: dict | None) -> str | None:
    for meta in (run_dir / "tuneloop_base.json", run_dir / "adapter" / "tuneloop_base.json"):
        data = _read_json(meta)
        if data and data.get("base_model"):
            return str(data["base_model"])
    return str(recipe["model"]) if recipe and recipe.get("model") else None


def _data_provenance(recipe: dict | None) -> dict | None:
    train = (recipe or {}).get("data", {}).get("train")
    if not train:
        return None
    train = Path(train)
    folder = train.parent
    info = {"train_file": str(train), "manifest": _read_json(folder / "manifest.json"),
            "report": _read_json(folder / "report.json")}
    if train.is_file():
        info["train_sha256"] = hashlib.sha256(train.read_bytes()).hexdigest()
    return info


def card_facts(source, export_format: str | None = None) -> dict:
    """Everything a card states, gathered from the run's files (see the module docstring)."""
    run_dir = Path(str(source))
    recipe_file = run_dir / "recipe.resolved.yaml"
    recipe = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) if recipe_file.is_file() else None
    head = _read_json(run_dir / "labels.json") if run_dir.is_dir() else None  # a classifier run (tune/classifier.py)
    base = _base_model(run_dir, recipe) if recipe else (str(head["base_model"]) if head else str(source))
    card = catalog.find_card(base) if base else None
    evaluation = find_results(run_dir, "eval.json") if run_dir.is_dir() else None
    audit = find_results(run_dir, "audit.json") if run_dir.is_dir() else None
    return {
        "name": (recipe or {}).get("name") or run_dir.name, "source": str(source), "export_format": export_format,
        "base_model": base, "base_hub_id": card.hub_id if card else None,
        "license": card.license if card else None, "commercial": card.commercial if card else None,
        "recipe": recipe, "summary": _read_json(run_dir / "summary.json"), "data": _data_provenance(recipe),
        "eval": {"path": str(evaluation[0]), **evaluation[1]} if evaluation else None,
        "audit": {"path": str(audit[0]), **audit[1]} if audit else None,
        "labels": head["labels"] if head else None,  # set: a sequence classifier, not a generator
    }


def _metadata(facts: dict) -> dict:
    license_id = HF_LICENSES.get((facts["license"] or "").lower(), "other" if facts["license"] else "unknown")
    meta = {"license": license_id}
    if license_id == "other":
        meta["license_name"] = facts["license"]
    if facts["base_hub_id"] or facts["base_model"]:
        meta["base_model"] = facts["base_hub_id"] or facts["base_model"]
    method = (facts["recipe"] or {}).get("method") or ("lora" if facts["labels"] else None)
    task = "text-classification" if facts["labels"] else "text-generation"
    meta.update({"library_name": "transformers", "pipeline_tag": task,
                 "tags": ["tuneloop", *([method] if method else []), "fine-tuned"]})
    evaluation = facts["eval"]
    if evaluation:
        metrics = [{"type": name, "name": name, "value": round(float(v), 4)}
                   for name, v in evaluation["metrics"].items() if name in QUALITY_METRICS]
        meta["model-index"] = [{"name": facts["name"], "results": [{
            "task": {"type": task},
            "dataset": {"name": Path(evaluation["data"]).name, "type": "custom"}, "metrics": metrics}]}]
    return meta


def _model_section(facts: dict) -> str:
    recipe = facts["recipe"] or {}
    lines = ["## Model details", "",
             f"- **Base model:** {facts['base_model'] or 'unknown'}" + (f" (`{facts['base_hub_id']}`)" if facts["base_hub_id"] else ""),
             f"- **Licence:** {facts['license'] or 'unknown: see the base model licence'}"
             + ("" if facts["commercial"] is None else f" (commercial use: {'yes' if facts['commercial'] else 'no'})"),
             f"- **Fine-tuning method:** {recipe.get('method') or _head_method(facts)}",
             f"- **Exported as:** {facts['export_format'] or 'n/a'} (adapter merged into the base weights)",
             f"- **Source run:** `{facts['source']}`", ""]
    return "\n".join(lines)


def _head_method(facts: dict) -> str:
    labels = facts["labels"]
    return f"LoRA + a linear classification head over {len(labels)} labels" if labels else "unknown"


def _data_section(facts: dict) -> str:
    data = facts["data"]
    lines = ["## Training data", ""]
    if data is None:
        return "\n".join(lines + ["No training data is recorded for this model.", ""])
    lines.append(f"Training file: `{data['train_file']}`" + (f" (sha256 `{data['train_sha256'][:16]}...`)" if data.get("train_sha256") else ""))
    manifest, report = data["manifest"], data["report"]
    if not manifest:
        return "\n".join(lines + ["", "This file was not produced by `tuneloop data prepare`: no provenance "
                                  "(sources, cleaning, PII redaction) is recorded.", ""])
    lines += ["", "Prepared with `tuneloop data prepare` " + f"(tuneloop {manifest.get('version', '?')}). Sources:", ""]
    lines += [f"- `{i['path']}`: {i['bytes']:,} bytes, sha256 `{i['sha256'][:16]}...`" for i in manifest.get("inputs", [])]
    if report:
        c = report.get("counts", {})
        lines += ["", f"Records: {c.get('input', '?')} read, {c.get('invalid', 0)} invalid, "
                  f"{c.get('exact_duplicates', 0)} exact and {c.get('near_duplicates', 0)} near duplicates removed, "
                  f"{c.get('filtered', 0)} filtered, {c.get('output', '?')} kept. "
                  f"PII redacted in {c.get('pii_redacted', 0)} records.",
                  "Splits: " + ", ".join(f"{k} {v}" for k, v in report.get("splits", {}).items()) + "."]
    settings = manifest.get("settings") or {}
    if settings:
        lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items() if not isinstance(v, (dict, list)))]
    return "\n".join(lines + [""])


def _training_section(facts: dict) -> str:
    recipe, summary = facts["recipe"], facts["summary"]
    lines = ["## Training procedure", ""]
    if summary:
        figures = [f"{k.replace('_', ' ')} {summary[k]:.4g}" if isinstance(summary[k], float) else f"{k.replace('_', ' ')} {summary[k]}"
                   for k in ("steps", "trained_tokens", "final_loss", "best_validation_loss", "best_validation_accuracy",
                             "wall_seconds", "seconds", "precision")
                   if summary.get(k) is not None]
        lines += ["Run: " + "; ".join(figures) + ".", ""]
    if recipe:
        keep = {k: recipe[k] for k in ("model", "method", "lora", "train") if k in recipe}
        lines += ["Recipe (`recipe.resolved.yaml`):", "", "```yaml", yaml.safe_dump(keep, sort_keys=False).rstrip(), "```", ""]
    else:
        lines += ["No training recipe recorded (the export source is not a tuneloop run).", ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def _eval_section(facts: dict) -> str:
    evaluation = facts["eval"]
    lines = ["## Evaluation", ""]
    if not evaluation:
        return "\n".join(lines + ["Not evaluated yet: run `tuneloop eval --model RUN_DIR --data FILE` and export again.", ""])
    how = "one forward pass per text" if facts["labels"] else "greedy decoding"
    lines.append(f"On {evaluation['n']} samples of `{evaluation['data']}` ({evaluation.get('task', '')}, {how}; "
                 f"`{evaluation['path']}`).")
    comparison = evaluation.get("comparison")
    lines.append("")
    if comparison:
        lines += [f"Baseline: `{evaluation['baseline']['model']}`. Deltas with 95% paired-bootstrap CIs.", "",
                  "| metric | baseline | this model | delta | 95% CI |", "|---|---|---|---|---|"]
        for name, row in comparison.items():
            ci = f"[{row['ci95'][0]:+.4g}, {row['ci95'][1]:+.4g}]" if row.get("ci95") else ""
            lines.append(f"| {name} | {_fmt(row['baseline'])} | {_fmt(row['model'])} | {row['delta']:+.4g} | {ci} |")
    else:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in evaluation["metrics"].items()]
    gate = evaluation.get("gate")
    if gate:
        lines += ["", f"Release gate `{gate['rule']}`: {'passed' if gate['passed'] else 'FAILED'}."]
    return "\n".join(lines + [""])


def _bias_section(facts: dict) -> str:
    audit = facts["audit"]
    lines = ["## Bias and fairness", ""]
    if not audit:
        return "\n".join(lines + ["No bias audit recorded: run `tuneloop audit --model RUN_DIR --data FILE` "
                                  "(counterfactual name, gender, nationality and dialect swaps) and export again.", ""])
    lines += [f"`tuneloop audit` on {audit['n']} records of `{audit['data']}`. Gap: best minus worst group "
              "quality on counterfactual variants, 95% paired-bootstrap CI.", "",
              "| probe | records | answers changed | gap | 95% CI | flagged |", "|---|---|---|---|---|---|"]
    for p in audit.get("probes", []):
        ci = p["bias_gap_ci95"]
        lines.append(f"| {p['probe']} ({' vs '.join(p['groups'])}) | {p['n_records']} | {p['change_rate']:.3f} | "
                     f"{p['bias_gap']:+.3f} ({p['gap_groups'][0]} - {p['gap_groups'][1]}) | [{ci[0]:+.3f}, {ci[1]:+.3f}] | "
                     f"{'**yes**' if p['flagged'] else 'no'} |")
    for name, f in (audit.get("fields") or {}).items():
        parts = [f"quality gap {f['quality_gap']:+.3f}"] if "quality_gap" in f else []
        if "demographic_parity_difference" in f:
            parts += [f"demographic parity difference {f['demographic_parity_difference']:.3f}",
                      f"equalized odds difference {f['equalized_odds_difference']:.3f}"]
        lines.append(f"\nField `{name}`: " + ", ".join(parts) + ".")
    return "\n".join(lines + [""])


def _use_section(facts: dict) -> str:
    data = facts["data"] or {}
    report = data.get("report") or {}
    kept = (report.get("counts") or {}).get("output")
    evaluation, audit = facts["eval"], facts["audit"]
    flagged = [p["probe"] for p in (audit or {}).get("probes", []) if p["flagged"]]
    lines = ["## Intended use and limitations", "",
             f"Intended use: the task and domain of its training data ({kept if kept is not None else 'an unrecorded number of'} "
             "records, above): answering requests like those, in the same language and style. It is not a "
             "general-purpose assistant beyond what the base model already is.", "",
             "Limitations:", "",
             f"- It inherits the base model's limitations and licence terms ({facts['license'] or 'see the base model'}).",
             ("- Evaluated on " + str(evaluation["n"]) + " samples only; the CIs above show how far the figures may move."
              if evaluation else "- Not evaluated: quality on any data is unknown."),
             ("- Bias probes flagged: " + ", ".join(flagged) + ". Review before use with the affected groups."
              if flagged else ("- No bias probe flagged a gap beyond noise; probes cover only their word lists."
                               if audit else "- Not audited for bias.")),
             "- Small models state wrong facts fluently: check answers that matter against the source.", ""]
    return "\n".join(lines)


def _usage_section(facts: dict) -> str:
    if facts["labels"]:
        return "\n".join(["## How to use", "", "```python",
                          "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                          'model = AutoModelForSequenceClassification.from_pretrained("PATH_TO_THIS_DIRECTORY")',
                          'tokenizer = AutoTokenizer.from_pretrained("PATH_TO_THIS_DIRECTORY")',
                          'probs = model(**tokenizer(["some text"], return_tensors="pt")).logits.softmax(-1)',
                          "print(model.config.id2label[int(probs.argmax())])", "```", "",
                          "Or `tuneloop serve --model NAME=PATH_TO_THIS_DIRECTORY` and `POST /v1/classify`.", ""])
    return "\n".join(["## How to use", "", "```python",
                      "from transformers import AutoModelForCausalLM, AutoTokenizer",
                      'model = AutoModelForCausalLM.from_pretrained("PATH_TO_THIS_DIRECTORY")',
                      'tokenizer = AutoTokenizer.from_pretrained("PATH_TO_THIS_DIRECTORY")',
                      'ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="pt")',
                      "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:], skip_special_tokens=True))",
                      "```", "", "Or `tuneloop serve --model PATH_TO_THIS_DIRECTORY` for an OpenAI-compatible API.", ""])


def build_model_card(source, export_format: str | None = None) -> str:
    """The card's text for a run (or any model reference)."""
    facts = card_facts(source, export_format)
    front = yaml.safe_dump(_metadata(facts), sort_keys=False, allow_unicode=True)
    body = [f"# {facts['name']}", "",
            f"Fine-tuned with tuneloop from {facts['base_model'] or 'an unrecorded base'}.",
            "Every figure below is read from the files the pipeline wrote.", "",
            _model_section(facts), _data_section(facts), _training_section(facts), _eval_section(facts),
            _bias_section(facts), _use_section(facts), _usage_section(facts)]
    return f"---\n{front}---\n\n" + "\n".join(body)


def write_model_card(out_dir, source, export_format: str | None = None) -> Path:
    path = Path(out_dir) / CARD_FILE
    write_text_atomic(path, build_model_card(source, export_format))
    return path
