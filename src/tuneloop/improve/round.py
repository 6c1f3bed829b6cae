"""One ``tuneloop improve`` round: feedback -> data -> candidate -> gated eval -> register -> promote.

    from tuneloop.improve import ImproveSettings, run_round
    result = run_round(ImproveSettings(name="support", db_url="sqlite:///serve.db"))
    result["status"]   # waiting | skipped | promoted | rejected | superseded

Nothing that serves changes until the last step: the round works in its own directory
(``round-N-<time>/``: feedback, prepared data, the merged parent, the candidate run, both evals,
``report.html``) and then writes the registry in one transaction (the candidate version, its alias,
the round's record, and the production move when the gate passed and production is still the
version the round started from). A round killed at any step before that leaves the registry, and so
every server following it, as it was. One round per model at a time (:class:`RoundLock`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneloop.config.recipe import recipe_from_dict
from tuneloop.evaluate import run_eval
from tuneloop.export import export_model
from tuneloop.export.model_card import build_model_card
from tuneloop.improve.data import RoundData, build_round_data, new_feedback
from tuneloop.improve.gate import check_rules, decide
from tuneloop.improve.lock import RoundLock
from tuneloop.improve.report import write_round_report
from tuneloop.models.loading import resolve_model
from tuneloop.paths import make_dir, tuneloop_home, write_json_atomic
from tuneloop.registry.lineage import version_from_run
from tuneloop.registry.store import ModelVersion, Registry
from tuneloop.serve.store import Store
from tuneloop.train import run_training


@dataclass
class ImproveSettings:
    """Knobs of a round (the ``tuneloop improve`` flags of the same names)."""

    name: str  # the registry model whose production version is improved
    db_url: str | None = None  # the serving store and the registry (one database)
    out_dir: str | None = None  # where round directories go [default: $TUNELOOP_HOME/improve/NAME]
    gates: list[str] = field(default_factory=list)  # extra rules on the held-out feedback
    margin: float = 0.05  # the largest regression-set loss tolerated (see gate.py)
    min_feedback: int = 1  # new feedback rows needed to start a round
    satisfaction_below: float | None = None  # ... or a satisfaction of the new feedback below this
    steps: int = 40  # LoRA optimizer steps of the candidate
    learning_rate: float = 1e-3
    lora_r: int = 8
    batch_size: int = 4  # examples per optimizer step
    repeat: int = 4  # each correction (or, with dpo, each pair) appears this many times per round
    method: str = "sft"  # sft: corrections + replay; dpo: the round's preference pairs, production as reference
    replay: int = -1  # records of production's training data replayed (-1: 3x the corrections)
    regression_data: str | None = None  # overrides the production version's regression set
    max_new_tokens: int = 48
    seed: int = 0
    actor: str = "improve"


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def trigger(settings: ImproveSettings, feedback: list[dict]) -> str | None:
    """Why a round should run on this new feedback, or None."""
    if settings.satisfaction_below is not None:
        rated = [f["rating"] for f in feedback if f["rating"] is not None]
        satisfaction = sum(1 for r in rated if r > 0) / len(rated) if rated else None
        if satisfaction is not None and satisfaction < settings.satisfaction_below:
            return f"satisfaction {satisfaction:.0%} < {settings.satisfaction_below:.0%}"
    if len(feedback) >= settings.min_feedback:
        return f"{len(feedback)} new feedback >= {settings.min_feedback}"
    return None


def run_round(settings: ImproveSettings) -> dict:
    """Run one round if a trigger fires; returns what happened (also in the round's round.json)."""
    check_rules(settings.gates)
    # stdout carries only the round's outcome (the line ``describe`` makes, which cron or a workflow
    # reads); the steps' own progress (training prints its set-up there) joins the round's log on stderr.
    with RoundLock(settings.name, settings.db_url), contextlib.redirect_stdout(sys.stderr):
        registry, store = Registry(settings.db_url), Store(settings.db_url)
        try:
            return _round(settings, registry, store)
        finally:
            registry.close()
            store.close()


def _round(settings: ImproveSettings, registry: Registry, store: Store) -> dict:
    production = registry.get(settings.name, "production")
    after = registry.feedback_through(settings.name)
    requests, feedback, through = new_feedback(store, after)
    why = trigger(settings, feedback)
    if why is None:
        return {"status": "waiting", "production": production.version, "new_feedback": len(feedback),
                "reason": f"{len(feedback)} new feedback < --min-feedback {settings.min_feedback}"}
    round_dir = _round_dir(settings, len(registry.rounds(settings.name)) + 1)
    _log(f"improve {settings.name}: round in {round_dir} ({why}); production is v{production.version}")
    started = time.perf_counter()
    data = build_round_data(requests, feedback, round_dir, train_data=production.train_data,
                            regression_data=settings.regression_data or production.regression_data,
                            tokenizer_model=resolve_model(production.path).path.as_posix(),
                            repeat=settings.repeat, replay=settings.replay, seed=settings.seed,
                            method=settings.method)
    if data.skip_reason:
        result = {"status": "skipped", "production": production.version, "reason": data.skip_reason,
                  "counts": data.counts, "round_dir": str(round_dir)}
        write_json_atomic(round_dir / "round.json", result)
        return result
    parent = _parent_model(production, round_dir)
    if settings.method == "dpo":
        _log(f"   training a DPO candidate on {data.counts['train_records']} records "
             f"({data.counts['train_pairs']} preference pairs x{settings.repeat}; production is the reference)")
    else:
        _log(f"   training a candidate on {data.counts['train_records']} records "
             f"({data.counts['train_corrections']} corrections x{settings.repeat}, {data.counts['replayed']} replayed)")
    candidate_dir = Path(_train(settings, data, parent, round_dir))
    heldout, regression = _evaluate(settings, data, candidate_dir, production, round_dir)
    decision = decide(heldout, regression, settings.margin)
    version = version_from_run(settings.name, candidate_dir, parent_version=production.version,
                               regression_data=str(data.regression) if data.regression else None,
                               eval_results={"gate": decision.as_dict(), "heldout": _figures(heldout),
                                             "regression": _figures(regression) if regression else None},
                               source=f"improve round in {round_dir.name}", created_by=settings.actor)
    version.model_card = build_model_card(candidate_dir)
    status = "promoted" if decision.passed else "rejected"
    record = {"status": status, "feedback_through": through, "production_version": production.version,
              "gate": decision.as_dict(), "report": str(round_dir / "report.html")}
    added = registry.register(version, alias="candidate", actor=settings.actor, round_record=record,
                              reason=f"gate {'passed' if decision.passed else 'failed'} in {round_dir.name}",
                              promote_if_production_is=production.version if decision.passed else None)
    status = "promoted" if "production" in added.aliases else ("rejected" if not decision.passed else "superseded")
    result = {"status": status, "production": registry.aliases(settings.name).get("production"),
              "parent": production.version, "candidate": added.version, "gate": decision.as_dict(),
              "counts": data.counts, "round_dir": str(round_dir), "seconds": round(time.perf_counter() - started, 1),
              "trigger": why, "settings": asdict(settings)}
    write_json_atomic(round_dir / "round.json", result)
    write_round_report(round_dir / "report.html", result, heldout, regression)
    return result


def _round_dir(settings: ImproveSettings, number: int) -> Path:
    base = Path(settings.out_dir) if settings.out_dir else tuneloop_home() / "improve" / settings.name
    return make_dir(base / f"round-{number}-{time.strftime('%Y%m%d-%H%M%S')}", "--out")


def _parent_model(production: ModelVersion, round_dir: Path) -> Path:
    """Production as a plain model directory: an adapter run is merged, so the candidate's LoRA
    learns on top of everything production learned."""
    resolved = resolve_model(production.path)
    if resolved.adapter is None:
        return resolved.path
    export_model(production.path, "safetensors", round_dir / "parent", overwrite=True)
    return round_dir / "parent"


def _train(settings: ImproveSettings, data: RoundData, parent: Path, round_dir: Path) -> Path:
    recipe = recipe_from_dict({
        "name": "candidate", "model": str(parent.resolve()), "method": "dpo" if settings.method == "dpo" else "lora",
        "output_dir": str(round_dir / "runs"),
        "data": {"train": str(data.train), "validation": str(data.validation) if data.validation else None},
        "lora": {"r": settings.lora_r, "alpha": 2 * settings.lora_r, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"epochs": 1000, "max_steps": settings.steps, "learning_rate": settings.learning_rate,
                  "warmup_ratio": 0.05, "batch_size": settings.batch_size, "max_seq_len": 256,
                  "seed": settings.seed, "eval_every": max(1, settings.steps), "save_every": 100000},
        "tracking": {"backend": "none"},
        **({"preference": {"holdout": 0.0}} if settings.method == "dpo" else {}),
    }, source=f"improve round {round_dir.name}")
    return run_training(recipe)


def _evaluate(settings: ImproveSettings, data: RoundData, candidate: Path, production: ModelVersion,
              round_dir: Path) -> tuple[dict, dict | None]:
    common = {"baseline": production.path, "max_new_tokens": settings.max_new_tokens, "progress": False}
    _log("   evaluating candidate vs production on the held-out feedback")
    heldout = run_eval(str(candidate), data.heldout, out_dir=round_dir / "eval-heldout", gates=settings.gates,
                       **common)
    regression = None
    if data.regression is not None:
        _log(f"   ... and on the regression set {data.regression}")
        regression = run_eval(str(candidate), data.regression, out_dir=round_dir / "eval-regression", **common)
    return heldout, regression


def _figures(result: dict) -> dict:
    return {"data": result["data"], "n": result["n"],
            "comparison": {k: v for k, v in (result["comparison"] or {}).items()
                           if k in ("fact_accuracy", "rougeL", "exact_match")}}


def describe(result: dict) -> str:
    """The line ``tuneloop improve`` prints for a round."""
    status = result["status"]
    if status in ("waiting", "skipped"):
        return f"{status}: {result['reason']} (production stays v{result['production']})"
    checks = "; ".join(f"{c['check']}: {c['metric']} {c.get('delta', c.get('candidate', 0)):+.3f}"
                       + (f" CI [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]" if "ci95" in c else "")
                       + (" ok" if c["passed"] else " FAILED") for c in result["gate"]["checks"])
    moved = {"promoted": f"v{result['candidate']} is production",
             "rejected": f"v{result['candidate']} rejected, production stays v{result['production']}",
             "superseded": f"v{result['candidate']} passed but production moved meanwhile (now "
                           f"v{result['production']}); left as candidate"}[status]
    return f"{status}: {moved}. {checks}. Report: {result['round_dir']}/report.html"

