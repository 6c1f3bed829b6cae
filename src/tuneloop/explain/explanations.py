"""``explain``: token attributions for prompts or a data file, for a model and its baseline side by side.

    from tuneloop.explain.explanations import explain, items_from_file
    explain("runs/support-bot", items_from_file("eval/predictions.jsonl", wrong_only=True),
            baseline="smollm2-135m-instruct", out_dir="eval/explain")

Inputs are *items*: a chat prompt and, optionally, the answer to explain. An eval ``predictions.jsonl``
gives its rows' prompts and the model's recorded answers (``--wrong-only`` keeps the wrong ones, which
is how the eval report links its wrong answers to explanations: ``eval/explain/index.html#ex-ID``);
any evaluation data file gives its prompts, and the model explains its own greedy answer. Both models
explain the *same* answer text where there is one, so the two heat maps differ only by the model:
that difference is what fine-tuning changed. Files: ``index.html`` and ``explanations.json``.
"""

from __future__ import annotations

import gc
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.evaluate.examples import load_examples
from tuneloop.evaluate.report import WRONG_SAMPLE_SIZE
from tuneloop.explain.attribution import attribute_answer
from tuneloop.explain.render import render_explanations
from tuneloop.models.loading import load_model_and_tokenizer
from tuneloop.paths import make_dir, write_json_atomic, write_text_atomic

DEFAULT_MAX_ITEMS = 20


@dataclass
class ExplainItem:
    id: str
    messages: list[dict]  # the prompt
    target: str | None = None  # the answer to explain; None: each model's own greedy answer
    reference: str | None = None
    note: str | None = None


def _is_predictions_file(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(next((line for line in f if line.strip()), "{}"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(first, dict) and {"prompt", "prediction", "correct"} <= first.keys()


def wrong_sample(rows: list[dict]) -> list[int]:
    """The wrong answers the eval report shows (its fixed sample), so its "why?" links all resolve."""
    wrong = [i for i, r in enumerate(rows) if not r.get("correct")]
    return sorted(random.Random(0).sample(wrong, min(WRONG_SAMPLE_SIZE, len(wrong))))


def _prediction_items(path: Path, wrong_only: bool) -> list[ExplainItem]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"not valid JSON ({e.msg})", where=f"{path}:{line_no}",
                                hint="pass the predictions.jsonl that `tuneloop eval` wrote") from None
    items = []
    for i in wrong_sample(rows) if wrong_only else range(len(rows)):
        row = rows[i]
        target = row["prediction"] if str(row.get("prediction", "")).strip() else None
        items.append(ExplainItem(str(row.get("id", i)), [{"role": "user", "content": row["prompt"]}], target,
                                 row.get("reference"), "wrong in eval" if not row.get("correct") else "right in eval"))
    return items


def items_from_file(path, wrong_only: bool = False, max_items: int | None = DEFAULT_MAX_ITEMS,
                    target: str | None = None) -> list[ExplainItem]:
    """Items from an eval predictions.jsonl or any evaluation data file (first ``max_items``; with
    ``wrong_only``, the wrong answers the eval report shows)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file", hint="pass --data a predictions.jsonl from eval, or a data file")
    if _is_predictions_file(path):
        items = _prediction_items(path, wrong_only)
    elif wrong_only:
        raise UserError("--wrong-only needs the predictions.jsonl that `tuneloop eval` writes", where=str(path),
                        hint="run eval first, then explain --data eval/predictions.jsonl --wrong-only")
    else:
        items = [ExplainItem(e.id, e.prompt, None, e.reference) for e in load_examples(path)]
    if target is not None:
        items = [ExplainItem(i.id, i.messages, target, i.reference, i.note) for i in items]
    return items[:max_items] if max_items else items


def default_out_dir(data: str | None, wrong_only: bool) -> Path:
    """Beside an eval's predictions (where its report links to), else ./explain."""
    if data and wrong_only:
        return Path(data).parent / "explain"
    return Path("explain")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="answer", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def attribute_all(reference: str, items: list[ExplainItem], method: str, max_new_tokens: int,
                  progress: bool = True) -> list[dict]:
    """Load one model, explain every item, free the model."""
    # Merged: gradients and ablations then see one plain model, whatever the run's adapter type.
    model, tokenizer = load_model_and_tokenizer(reference, merge_adapter=True)
    out = []
    with _progress(len(items), f"{Path(str(reference)).name}: {method}", progress) as bar:
        for item in items:
            out.append(attribute_answer(model, tokenizer, item.messages, item.target, method,
                                        max_new_tokens).to_json())
            bar.update(1)
    del model
    gc.collect()
    return out


def explain(model: str, items: list[ExplainItem], baseline: str | None = None, out_dir=None,
            method: str = "ablation", max_new_tokens: int = 32, progress: bool = True) -> dict:
    """Attributions for ``model`` (and ``baseline``) on every item; writes index.html when ``out_dir``."""
    if not items:
        raise UserError("nothing to explain", where="--data", hint="with --wrong-only: the evaluation had no wrong answers")
    models = [("model", model)] + ([("baseline", baseline)] if baseline else [])
    results = {role: attribute_all(ref, items, method, max_new_tokens, progress) for role, ref in models}
    records = [{"id": item.id, "prompt": item.messages[-1]["content"], "reference": item.reference,
                "note": item.note, **{role: results[role][k] for role, _ in models}} for k, item in enumerate(items)]
    result = {"model": str(model), "baseline": baseline, "method": method, "items": records}
    if out_dir is not None:
        out_dir = make_dir(out_dir)
        titles = {"model": f"model: {model}", "baseline": f"baseline: {baseline}"}
        page = [{**r, "panels": [(titles[role], r[role]) for role in ("baseline", "model") if role in r]}
                for r in records]
        write_text_atomic(out_dir / "index.html", render_explanations(page, f"tuneloop explain: {model}"))
        write_json_atomic(out_dir / "explanations.json", result)
    return result
