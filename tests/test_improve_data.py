"""Where an improve round's held-out corrections come from (:func:`split_corrections`)."""

from __future__ import annotations

from tuneloop.improve.data import split_corrections


def _chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


RETURNS = ["You can return any item within 60 days of delivery.",
           "Our return window is 60 days from the day your order arrives.",
           "Returns are accepted up to 60 days after delivery."]
QUESTIONS = ["How long do I have to return something?", "What is your return window?",
             "How many days do I have to return an item?", "What's the deadline for returns?",
             "Is there a time limit on returns?", "How long is the return period?"]
ONCE = [_chat("Do you ship abroad?", "We ship to 31 countries in Europe and North America."),
        _chat("How much is express?", "Express delivery costs $14.90 and arrives the next business day."),
        _chat("Can I pay by invoice?", "Invoices are available for business accounts only.")]


def test_held_out_corrections_come_only_from_topics_corrected_more_than_once():
    repeated = [_chat(q, RETURNS[i % 3]) for i, q in enumerate(QUESTIONS)]
    train, held = split_corrections(repeated + ONCE, 0.3, seed=0)
    assert len(held) == 2 and all("60 days" in r["messages"][-1]["content"] for r in held)
    assert all(r in train for r in ONCE)  # each taught once: trained on, never held out
    assert sum("60 days" in r["messages"][-1]["content"] for r in train) == 4


def test_one_question_asked_twice_stays_on_one_side():
    twice = [_chat(q, a) for q in QUESTIONS[:3] for a in RETURNS[:2]]
    for seed in range(5):
        train, held = split_corrections(twice, 0.3, seed=seed)
        held_prompts = {r["messages"][0]["content"] for r in held}
        assert held_prompts and not held_prompts & {r["messages"][0]["content"] for r in train}


def test_a_topic_always_keeps_one_correction_to_learn_from():
    train, held = split_corrections([_chat(q, RETURNS[0]) for q in QUESTIONS[:2]] + ONCE, 0.9, seed=0)
    assert len(held) == 1 and len(train) == 4


def test_without_a_repeated_topic_a_plain_share_is_held_out():
    noise = [_chat(f"question {i}", f"zq{i} vok{i * 7} pell{i * 13}") for i in range(10)]
    train, held = split_corrections(noise, 0.3, seed=0)
    assert (len(train), len(held)) == (7, 3)


def test_replay_leaves_out_what_the_corrections_supersede(tmp_path):
    from tuneloop.improve.data import replay_split
    from tuneloop.paths import write_jsonl_atomic

    stale = [_chat(q, a.replace("60", "45")) for q, a in zip(QUESTIONS, RETURNS * 2)]
    write_jsonl_atomic(tmp_path / "train.jsonl", stale + ONCE)
    corrections = [_chat(q, a) for q, a in zip(QUESTIONS, RETURNS)]  # an answer is superseded by a correction like it
    replayed, held_back, superseded = replay_split(str(tmp_path / "train.jsonl"), 100, 0, 0, corrections)
    assert superseded == len(stale) and sorted(map(str, replayed)) == sorted(map(str, ONCE))
    assert replay_split(str(tmp_path / "train.jsonl"), 100, 0, 0)[2] == 0  # no corrections: all replayable


def test_held_out_corrections_are_scored_on_the_figures_they_changed():
    from tuneloop.improve.data import corrected_figures, with_corrected_facts

    assert corrected_figures(RETURNS[1], RETURNS[1].replace("60", "45")) == ["60 days"]
    assert corrected_figures("A label costs $3.95; refunds take 8 business days.", "I am not sure.") == \
        ["$3.95", "8 business"]
    held = [dict(_chat(q, a), id=str(i)) for i, (q, a) in enumerate(zip(QUESTIONS, RETURNS))]
    stale = {str(i): "Returns are accepted up to 45 days after delivery." for i in range(3)}
    assert [r["facts"] for r in with_corrected_facts(held, stale)] == [["60 days"]] * 3
    # one correction that changes no figure: nobody's facts, so the gate falls back to ROUGE-L
    mixed = held + [dict(_chat("Can I pay by invoice?", "Only business accounts can."), id="3")]
    assert not any("facts" in r for r in with_corrected_facts(mixed, stale))
