"""`tuneloop auto`'s pieces: data inspection, model choice (offline), and the classifier-head path."""

from __future__ import annotations

import json
import random

import pytest

from tuneloop.errors import UserError
from tuneloop.tune.auto import choose_model, inspect_data, score_generative
from tuneloop.tune.classifier import (HEAD_STUDY_TRIALS, ClassifierSettings, evaluate_classifier, head_study,
                                      length_bucketed_batches, plan_head_study, text_and_label, train_classifier)

LABELS = ("card_arrival", "lost_or_stolen_card", "exchange_rate")
QUERIES = {
    "card_arrival": ["when will my card arrive", "my card has not come yet", "how long for card delivery",
                     "still waiting on my new card", "card not delivered"],
    "lost_or_stolen_card": ["i lost my card", "my card was stolen", "someone took my wallet and card",
                            "i cannot find my card anywhere", "report a stolen card"],
    "exchange_rate": ["what is the exchange rate", "how much is a euro in dollars", "exchange rate for pounds",
                      "which rate do you use to convert", "currency conversion rate today"],
}


def _write_prepared(directory, copies: int = 4):
    """A prepared classification directory (chat shape + label), every label in every split."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    splits = {"train": [], "validation": [], "test": []}
    for label, queries in QUERIES.items():
        for i, q in enumerate(queries * copies):
            split = "train" if i % 5 < 3 else ("validation" if i % 5 == 3 else "test")
            splits[split].append({"id": f"{label}-{i}", "label": label, "messages": [
                {"role": "user", "content": q}, {"role": "assistant", "content": label}]})
    for split, rows in splits.items():
        rng.shuffle(rows)
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def test_inspect_reads_the_task_shape_and_labels(tmp_path):
    prepared = _write_prepared(tmp_path / "p")
    profile, notes = inspect_data(prepared, tmp_path / "out")
    assert profile.task == "classification" and profile.labels == 3
    assert (profile.train, profile.validation, profile.test) == (36, 12, 12)
    assert profile.label_counts == {label: 12 for label in LABELS}
    assert "already prepared" in notes[0]


def test_inspect_prepares_a_raw_csv_with_named_columns(tmp_path):
    raw = tmp_path / "intents.csv"
    raw.write_text("text,category\n" + "".join(f"{q} number {i},{label}\n" for label, qs in QUERIES.items()
                                               for i in range(8) for q in qs))
    profile, notes = inspect_data(raw, tmp_path / "out")
    assert profile.task == "classification" and profile.labels == 3
    assert any("label = 'category'" in n for n in notes)
    assert (tmp_path / "out" / "prepared" / "report.json").is_file()


def test_inspect_refuses_missing_data(tmp_path):
    with pytest.raises(UserError, match="data not found"):
        inspect_data(tmp_path / "nope.csv", tmp_path / "out")


def test_model_choice_is_offline_and_explains_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))  # an empty store: only the embedded model
    profile, _ = inspect_data(_write_prepared(tmp_path / "p"), tmp_path / "out")
    name, reasons = choose_model(profile, memory_gb=16, budget_minutes=30)
    assert name == "smollm2-135m-instruct"
    assert reasons[0].startswith("smollm2-135m-instruct:") and "GB for LoRA" in reasons[0]
    assert any("not on this machine" in r for r in reasons)
    name, reasons = choose_model(profile, memory_gb=0.1, budget_minutes=30)  # nothing fits: the fallback
    assert name == "smollm2-135m-instruct" and "falling back" in reasons[-1]


def test_text_and_label_from_a_prepared_record():
    record = {"label": "x", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "x"}]}
    assert text_and_label(record) == ("q", "x")
    with pytest.raises(UserError, match="no label"):
        text_and_label({"messages": []})


@pytest.mark.slow
def test_classifier_head_trains_and_beats_its_untrained_self(tiny_model_dir, tmp_path):
    prepared = _write_prepared(tmp_path / "p", copies=6)
    settings = ClassifierSettings(model=str(tiny_model_dir), r=8, alpha=16, learning_rate=3e-3,
                                  head_learning_rate=1e-2, batch_size=8, max_steps=40, eval_every=20, max_len=16)
    run_dir = tmp_path / "head"
    summary = train_classifier(prepared / "train.jsonl", prepared / "validation.jsonl", run_dir, settings)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 40 and summary["labels"] == 3
    assert sum(m["loss"] for m in metrics[-10:]) < sum(m["loss"] for m in metrics[:10])  # it learned
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert json.loads((run_dir / "labels.json").read_text())["labels"] == sorted(LABELS)
    tuned = evaluate_classifier(run_dir, prepared / "test.jsonl", tmp_path / "eval")
    untrained = evaluate_classifier(run_dir, prepared / "test.jsonl", tmp_path / "eval", untrained=True,
                                    settings=settings)
    assert tuned["metrics"]["accuracy"] > untrained["metrics"]["accuracy"]
    assert tuned["metrics"]["accuracy"] >= 0.6  # three easy intents, reloaded from disk
    predictions = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 18 and {p["prediction"] for p in predictions} <= set(LABELS)


def test_length_bucketed_batches_group_similar_lengths():
    lengths = [5, 1, 4, 2, 3, 6, 9, 7]
    # one bucket of 6 rows sorted by length, then the 2 left over: each row once, batches of neighbours
    batches = length_bucketed_batches(lengths, batch_size=2, seed=0, bucket_batches=3)
    assert sorted(i for b in batches for i in b) == list(range(8))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded <= sum(lengths) + 8  # within one token a row of no padding at all
    assert length_bucketed_batches(lengths, 2, 0, 3) == batches  # the seed decides
    assert length_bucketed_batches(lengths, 2, 1, 3) != batches
    one_bucket = length_bucketed_batches([5, 1, 4, 2, 3, 6], batch_size=2, seed=0, bucket_batches=3)
    assert sorted(map(tuple, one_bucket)) == [(0, 5), (1, 3), (4, 2)]


@pytest.mark.slow
def test_generative_scoring_stops_at_its_time_and_counts_what_it_scored(tiny_model_dir, tmp_path):
    prepared = _write_prepared(tmp_path / "p")
    result = score_generative(str(tiny_model_dir), str(prepared / "test.jsonl"), sorted(LABELS), 5, seconds=0.0)
    assert result["n"] == 1 and 0.0 <= result["metrics"]["accuracy"] <= 1.0
    result = score_generative(str(tiny_model_dir), str(prepared / "test.jsonl"), sorted(LABELS), 3, seconds=1e6)
    assert result["n"] == 3 and result["forward_passes"] >= 3


@pytest.mark.slow
def test_auto_on_labelled_data_reports_both_formulations(tiny_model_dir, tmp_path):
    from tuneloop.tune.auto import run_auto

    prepared = _write_prepared(tmp_path / "p")
    report = run_auto(prepared, 0.3, 8.0, tmp_path / "out", model=str(tiny_model_dir))
    results = report["results"]
    assert results["classifier"]["test_samples"] == 12 and 0.0 <= results["classifier"]["test"]["accuracy"] <= 1
    generative = results["generative"]
    assert 1 <= generative["test_samples"] <= 12 and generative["base_test_samples"] <= generative["test_samples"]
    assert "accuracy" in generative["test"] and "accuracy" in generative["base_test"]
    assert report["winner"]["formulation"] in ("classifier", "generative")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "generative" in html and "classifier" in html
    # the tiny model trains an epoch in well under a second: the budget held a learning-rate study
    study = results["classifier_study"]
    assert study["trials"][0]["learning_rate"] == ClassifierSettings().learning_rate  # the prior first
    assert any("learning-rate study of" in d for d in report["decisions"]["hyperparameters"])
    assert results["classifier"]["train"]["settings"]["learning_rate"] == study["learning_rate"]


def test_the_head_study_runs_only_when_the_share_holds_five_epochs():
    fits, why = plan_head_study(share_s=900, epoch_s=261)  # Banking77 at 30 min: 3.4 epochs
    assert not fits and "3.4 epochs" in why and "needs 5" in why
    fits, why = plan_head_study(share_s=1800, epoch_s=261)
    assert fits and "6.9 epochs" in why


@pytest.mark.slow
def test_the_head_study_starts_from_the_prior_and_keeps_the_best(tiny_model_dir, tmp_path):
    prepared = _write_prepared(tmp_path / "p", copies=6)
    base = ClassifierSettings(model=str(tiny_model_dir), r=8, alpha=16, learning_rate=3e-3,
                              head_learning_rate=1e-2, batch_size=8, max_len=16, epochs=100)
    study = head_study(prepared / "train.jsonl", prepared / "validation.jsonl", tmp_path / "study", base,
                       seconds=HEAD_STUDY_TRIALS * 3.0)
    trials = study["trials"]
    assert trials[0]["learning_rate"] == 3e-3 and 1 <= len(trials) <= HEAD_STUDY_TRIALS
    assert all(3e-3 / 5 <= t["learning_rate"] <= 3e-3 * 5 for t in trials)
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert study["validation_accuracy"] == max(t["validation_accuracy"] for t in complete)
    assert study["learning_rate"] == next(t["learning_rate"] for t in complete
                                          if t["validation_accuracy"] == study["validation_accuracy"])
    assert (tmp_path / "study" / "trial-0" / "summary.json").is_file()


def test_a_time_budget_drives_the_learning_rate_schedule():
    from tuneloop.tune.classifier import lr_scale_at, training_progress

    assert training_progress(50, 100, 0.0, None) == 0.5
    assert training_progress(10, 12_500, 450.0, 900.0) == 0.5  # the time budget ends training first
    assert training_progress(10, 12_500, 2000.0, 900.0) == 1.0
    assert lr_scale_at(0, 0.0) == pytest.approx(1 / 11)  # warmup
    assert lr_scale_at(20, 0.0) == 1.0 and lr_scale_at(20, 0.5) == pytest.approx(0.55)
    assert lr_scale_at(20, 1.0) == pytest.approx(0.1)
