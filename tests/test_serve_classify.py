"""A classifier head from training to ``POST /v1/classify``: train on the tiny model, export it as a plain
transformers classifier (same logits), serve it over loopback beside a generative model and alone, and
every error the route gives."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest

from tuneloop.errors import UserError
from tuneloop.export import export_model
from tuneloop.models.classifier import is_classifier_export, is_classifier_run, load_classifier_run
from tuneloop.serve.app import build
from tuneloop.serve.classify import ranked
from tuneloop.serve.runner import ServerThread
from tuneloop.serve.schemas import ClassifyRequest
from tuneloop.serve.settings import ServeSettings
from tuneloop.tune.classifier import ClassifierSettings, train_classifier

KEY = "classify-key"
# Three labels whose texts share no words: separable for any model that can tell tokens apart.
TEXTS = {
    "fruit": ["apple banana cherry", "banana apple", "cherry pear apple", "pear banana", "apple pear cherry banana"],
    "number": ["seven eight nine", "eight seven", "nine three seven", "three eight", "seven nine three eight"],
    "color": ["red green blue", "green red", "blue purple red", "purple green", "red blue purple green"],
}
LABELS = sorted(TEXTS)
ALL = [(text, label) for label, texts in TEXTS.items() for text in texts]


def _write_split(path, rows):
    path.write_text("".join(json.dumps({"id": f"r{i}", "label": label, "messages": [
        {"role": "user", "content": text}, {"role": "assistant", "content": label}]}) + "\n"
        for i, (text, label) in enumerate(rows)))
    return path


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A classifier run trained on the separable set, and its export."""
    tmp = tmp_path_factory.mktemp("classify")
    train = _write_split(tmp / "train.jsonl", ALL * 4)
    validation = _write_split(tmp / "validation.jsonl", ALL)
    settings = ClassifierSettings(model=str(tiny_model_dir), r=8, alpha=16, learning_rate=3e-3,
                                  head_learning_rate=3e-2, batch_size=12, max_steps=30, eval_every=15, max_len=16)
    summary = train_classifier(train, validation, tmp / "run", settings)
    record = export_model(tmp / "run", "safetensors", tmp / "export", log=lambda text: None)
    return SimpleNamespace(run=tmp / "run", export=tmp / "export", summary=summary, record=record, tmp=tmp)


@pytest.fixture(scope="module")
def server(trained, tiny_model_dir):
    settings = ServeSettings(api_key=KEY, db_url=f"sqlite:///{trained.tmp / 'serve.db'}", max_tokens_limit=8,
                             default_max_tokens=4)
    served = build([str(tiny_model_dir), f"topics={trained.export}"], settings)
    with ServerThread(served.app) as thread:
        yield SimpleNamespace(url=thread.url, served=served, base=served.service.table.base_id)
    served.close()


def _post(server, body, path="/v1/classify", key=KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=60)


def _error(response, status, param=None, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert param is None or error["param"] == param
    assert code is None or error["code"] == code
    return error


# -- pure parts -------------------------------------------------------------------------------------

def test_ranked_orders_by_probability_and_breaks_ties_by_label_order():
    assert ranked([0.2, 0.5, 0.3], ["a", "b", "c"], 2) == [{"label": "b", "score": 0.5}, {"label": "c", "score": 0.3}]
    assert ranked([0.4, 0.2, 0.4], ["a", "b", "c"], 3) == [
        {"label": "a", "score": 0.4}, {"label": "c", "score": 0.4}, {"label": "b", "score": 0.2}]


@pytest.mark.parametrize("body, message", [
    ({"model": "m", "input": []}, "at least one text"), ({"model": "m", "input": ["ok", " "]}, "must not be empty"),
    ({"model": "m", "input": ["x"] * 257}, "at most 256"), ({"model": "m", "input": "x", "top_k": 0}, "greater than"),
])
def test_request_validation_names_the_problem(body, message):
    with pytest.raises(ValueError, match=message):
        ClassifyRequest.model_validate(body)
    assert ClassifyRequest.model_validate({"model": "m", "input": "one"}).texts() == ["one"]


# -- training and export ----------------------------------------------------------------------------

def test_the_export_loads_in_plain_transformers_with_the_same_logits(trained):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert is_classifier_run(trained.run) and is_classifier_export(trained.export)
    assert trained.record["task"] == "classification" and trained.record["labels"] == 3
    assert trained.record["merge_max_abs_diff"] <= 1e-3 and trained.record["reload_max_abs_diff"] <= 1e-4
    config = json.loads((trained.export / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["id2label"] == {str(i): label for i, label in enumerate(LABELS)}
    assert config["label2id"] == {label: i for i, label in enumerate(LABELS)}
    assert {"model.safetensors", "tokenizer.json", "export.json", "tuneloop_classifier.json"} <= {
        p.name for p in trained.export.iterdir()}
    assert not list(trained.export.parent.glob(".export.partial"))

    model = AutoModelForSequenceClassification.from_pretrained(trained.export).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained.export)
    texts = [t for t, _ in ALL]
    with torch.inference_mode():
        plain = model(**tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")).logits
    run = load_classifier_run(trained.run)  # the adapter on its base, unmerged
    with torch.inference_mode():
        adapter = run.model(**run.tokenizer(texts, padding=True, truncation=True, max_length=16,
                                            return_tensors="pt")).logits
    assert float((plain - adapter).abs().max()) < 1e-4
    assert [model.config.id2label[i] for i in plain.argmax(-1).tolist()] == [label for _, label in ALL]


def test_a_classifier_exports_only_as_safetensors(trained, tmp_path):
    with pytest.raises(UserError, match="safetensors only"):
        export_model(trained.run, "gguf", tmp_path / "out", log=lambda text: None)
    assert not (tmp_path / "out").exists()


# -- the route --------------------------------------------------------------------------------------

def test_classify_labels_the_separable_set_and_scores_are_probabilities(server):
    texts = [t for t, _ in ALL]
    response = _post(server, {"model": "topics", "input": texts, "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "topics" and len(body["data"]) == len(texts)
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    assert [d["label"] for d in body["data"]] == [label for _, label in ALL]  # the trained head gets all right
    for row in body["data"]:
        scores = [t["score"] for t in row["top"]]
        assert sorted({t["label"] for t in row["top"]}) == LABELS
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5
        assert row["top"][0] == {"label": row["label"], "score": row["score"]} and row["truncated"] is False
    tokenizer = server.served.classify.classifiers["topics"].classifier.tokenizer
    assert body["usage"]["prompt_tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in texts)


def test_one_text_defaults_to_the_top_label_and_top_k_is_capped(server):
    one = _post(server, {"model": "topics", "input": "apple banana"}).json()
    assert len(one["data"]) == 1 and one["data"][0]["label"] == "fruit" and len(one["data"][0]["top"]) == 1
    two = _post(server, {"model": "topics", "input": "apple banana", "top_k": 2}).json()["data"][0]
    assert len(two["top"]) == 2 and two["top"][0]["score"] >= two["top"][1]["score"]
    assert abs(two["score"] - one["data"][0]["score"]) < 1e-6  # a text's score does not depend on top_k
    many = _post(server, {"model": "topics", "input": ["seven"], "top_k": 50}).json()["data"][0]
    assert len(many["top"]) == 3


def test_long_inputs_are_truncated_to_the_training_length_and_say_so(server):
    row = _post(server, {"model": "topics", "input": "red green blue " * 40}).json()["data"][0]
    assert row["truncated"] is True and row["label"] == "color"


def test_classify_errors(server):
    _error(_post(server, {"model": "nope", "input": "x"}), 404, "model", "model_not_found")
    _error(_post(server, {"model": "../etc", "input": "x"}), 400, "model")
    error = _error(_post(server, {"model": server.base, "input": "x"}), 400, "model", "model_not_classifier")
    assert "topics" in error["message"]
    _error(_post(server, {"model": "topics"}), 400, "input", "missing_field")
    _error(_post(server, {"model": "topics", "input": []}), 400, "input")
    _error(_post(server, {"model": "topics", "input": "x", "top_k": 0}), 400, "top_k")
    _error(_post(server, {"model": "topics", "input": "x"}, key=None), 401)
    chat = _post(server, {"model": "topics", "messages": [{"role": "user", "content": "hi"}]},
                 path="/v1/chat/completions")
    assert "/v1/classify" in _error(chat, 400, "model", "model_not_generative")["message"]
    completion = _post(server, {"model": server.base, "prompt": "hi", "max_tokens": 2}, path="/v1/completions")
    assert completion.status_code == 200, completion.text  # the generative model beside it still answers


def test_classifiers_are_listed_recorded_and_counted(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    ids = [m["id"] for m in httpx.get(server.url + "/v1/models", headers=headers).json()["data"]]
    assert ids == [server.base, "topics"]
    assert httpx.get(server.url + "/v1/models/topics", headers=headers).json()["id"] == "topics"
    assert _post(server, {"model": "topics", "input": "nine eight"}).status_code == 200
    assert _post(server, {"model": "nope", "input": "x"}).status_code == 404
    rows = [r for r in server.served.store.requests() if r["kind"] == "classify"]
    assert any(r["status"] == 200 and r["prompt"] == "nine eight" and json.loads(r["response"]) == ["number"]
               for r in rows)
    assert any(r["status"] == 404 and r["model"] == "nope" and r["error"] for r in rows)
    metrics = httpx.get(server.url + "/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith("tuneloop_requests_total{")
               and all(part in line for part in ('endpoint="/v1/classify"', 'model="topics"', 'status="200"'))]
    assert counted and float(counted[0].split()[-1]) >= 1


def test_a_server_of_only_a_classifier_run(trained):
    served = build([f"heads={trained.run}"], ServeSettings(db_url=f"sqlite:///{trained.tmp / 'only.db'}"))
    try:
        assert served.engine is None and served.model_ids == ["heads"]
        with ServerThread(served.app) as thread:
            server = SimpleNamespace(url=thread.url)
            body = _post(server, {"model": "heads", "input": ["pear apple", "three nine"]}, key=None).json()
            assert [d["label"] for d in body["data"]] == ["fruit", "number"]
            chat = _post(server, {"model": "heads", "messages": [{"role": "user", "content": "hi"}]},
                         path="/v1/chat/completions", key=None)
            _error(chat, 400, "model", "model_not_generative")
            assert httpx.get(thread.url + "/health").json()["models"] == ["heads"]
    finally:
        served.close()


def test_two_models_under_one_id_are_refused(trained, tiny_model_dir):
    with pytest.raises(UserError, match="used twice"):
        build([str(tiny_model_dir), f"tiny-llama={trained.export}"],
              ServeSettings(db_url=f"sqlite:///{trained.tmp / 'twice.db'}"))


def test_auto_exports_a_winning_classifier_for_serving(trained):
    from tuneloop.tune.auto import _export_classifier

    report = {"winner": {"formulation": "classifier", "run_dir": str(trained.run), "accuracy": 1.0},
              "decisions": {}}
    _export_classifier(report, trained.tmp / "auto-out" / "classifier-model")
    exported = trained.tmp / "auto-out" / "classifier-model"
    assert report["winner"]["export"] == str(exported) and is_classifier_export(exported)
    assert "/v1/classify" in report["decisions"]["export"][0]
    assert json.loads((exported / "tuneloop_classifier.json").read_text())["labels"] == LABELS


def test_the_exported_card_describes_a_classifier(trained):
    card = (trained.export / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "AutoModelForSequenceClassification" in card
    assert f"**Base model:** {trained.summary['settings']['model']}" in card
    assert "classification head over 3 labels" in card and "/v1/classify" in card
