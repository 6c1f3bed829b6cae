"""``tuneloop data from-feedback``: known request and feedback rows -> exact SFT and preference records."""

from __future__ import annotations

from tuneloop.cli.main import main
from tuneloop.data.feedback import build_feedback_data
from tuneloop.paths import read_jsonl
from tuneloop.serve.store import FeedbackRow, RequestRow, Store

Q = [{"role": "user", "content": "Where is my order?"}]


def _request(rid, response, prompt=Q, kind="chat", status=200):
    return {"id": rid, "kind": kind, "prompt": prompt, "response": response, "status": status, "model": "m"}


def _feedback(fid, rid, rating, correction=None):
    return {"id": fid, "completion_id": rid, "rating": rating, "correction": correction, "model": "m"}


def test_corrections_become_sft_and_preference_records():
    data = build_feedback_data([_request("a", "No idea.")],
                               [_feedback(1, "a", -1, correction="It ships tomorrow.")])
    (sft,) = data.sft
    assert sft["messages"] == Q + [{"role": "assistant", "content": "It ships tomorrow."}]
    assert sft["source"] == "feedback:a" and sft["id"].startswith("fb-")
    (pair,) = data.preference
    assert pair["messages"] == Q
    assert pair["chosen"] == [{"role": "assistant", "content": "It ships tomorrow."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "No idea."}]


def test_rated_answers_to_the_same_prompt_become_pairs():
    other = [{"role": "user", "content": "Hi"}]
    requests = [_request("good", "Let me check order 12."), _request("bad", "No idea."),
                _request("lonely", "Hello!", prompt=other), _request("failed", "x", status=500)]
    feedback = [_feedback(1, "good", 1), _feedback(2, "bad", 1), _feedback(3, "bad", -1),  # changed mind: -1
                _feedback(4, "lonely", 1), _feedback(5, "failed", -1), _feedback(6, "ghost", 1)]
    data = build_feedback_data(requests, feedback)
    assert data.sft == []
    (pair,) = data.preference
    assert pair["chosen"][0]["content"] == "Let me check order 12." and pair["rejected"][0]["content"] == "No idea."
    assert data.report["preference"] == {"total": 1, "from_corrections": 0, "from_ratings": 1, "from_choices": 0}
    assert data.report["skipped"] == {"feedback_without_completion": 2}


def test_text_completions_use_the_string_form_and_pairs_are_capped():
    requests = [_request(f"p{i}", f"good {i}", prompt="Q:", kind="completion") for i in range(3)]
    requests += [_request(f"n{i}", f"bad {i}", prompt="Q:", kind="completion") for i in range(3)]
    feedback = [_feedback(i, r["id"], 1 if r["id"].startswith("p") else -1) for i, r in enumerate(requests)]
    data = build_feedback_data(requests, feedback, max_pairs_per_prompt=4)
    assert len(data.preference) == 4
    assert all(set(p) == {"id", "source", "prompt", "chosen", "rejected"} and p["prompt"] == "Q:"
               for p in data.preference)
    assert len({p["id"] for p in data.preference}) == 4


def test_from_feedback_command_writes_the_files(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    store = Store(db)
    store.record_request(RequestRow("a", "m", "chat", 10, 200, prompt=Q, response="No idea."))
    store.record_request(RequestRow("b", "m", "chat", 10, 200, prompt=Q, response="It ships today."))
    store.record_feedback(FeedbackRow("a", "m", -1, correction="It ships tomorrow."))
    store.record_feedback(FeedbackRow("b", "m", 1))
    store.close()
    try:
        main(["data", "from-feedback", "--db", db, "--out", str(tmp_path / "out")])
    except SystemExit as e:
        assert not e.code
    sft = read_jsonl(tmp_path / "out" / "sft.jsonl")
    preference = read_jsonl(tmp_path / "out" / "preference.jsonl")
    assert [r["messages"][-1]["content"] for r in sft] == ["It ships tomorrow."]
    assert sorted((p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in preference) == [
        ("It ships today.", "No idea."), ("It ships tomorrow.", "No idea.")]
    assert "1 SFT records, 2 preference pairs" in capsys.readouterr().out
    assert (tmp_path / "out" / "report.json").is_file()
