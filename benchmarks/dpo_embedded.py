"""DPO on the embedded SmolLM2-135M-Instruct: does preferring concise support answers shorten them?

The preference set is generated here, deterministically: customer-support questions, each with a
concise answer (chosen) and a rambling one that says the same after two sentences of filler
(rejected). 3 question topics (15 pairs) are held out entirely. The run trains DPO with LoRA, then this
script generates greedy answers to the held-out questions with the base model and with the tuned
one and adds the comparison (mean answer length in words, held-out choice accuracy) to the run's
``summary.json`` under ``behaviour``.

    .venv/bin/python benchmarks/dpo_embedded.py [--steps 16] [--out /tmp/dpo-embedded]

Prints the before/after table. Measured 2026-11-28 on 2 CPU cores shared with other jobs (35 min):
held-out choice accuracy 0.00 -> 1.00, reward margin 30.2, KL 1.17, but mean answer length
36.0 -> 37.2 words: the fixed filler sentences of the rejected answers are pushed down without
shortening the model's own answers (on-policy rejected answers, or ORPO, are the next thing to try).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TOPICS = [
    ("reset my password", "Click 'Forgot password' on the sign-in page and follow the emailed link."),
    ("track my order", "Open Orders in your account and click 'Track' next to the order."),
    ("return an item", "Start a return from Orders within 30 days; we email a prepaid label."),
    ("change my delivery address", "Edit the address in Orders before the parcel ships."),
    ("cancel my subscription", "Go to Account > Subscription and click 'Cancel'."),
    ("update my card details", "Go to Account > Payment methods and add the new card."),
    ("get a refund", "Refunds reach your card 3-5 working days after we receive the return."),
    ("contact a human agent", "Use the chat button and type 'agent', 8am-8pm daily."),
    ("apply a discount code", "Enter the code in the 'Promo code' box at checkout."),
    ("delete my account", "Go to Account > Privacy and choose 'Delete account'."),
    ("change my email address", "Go to Account > Profile and edit the email field."),
    ("download an invoice", "Open the order in Orders and click 'Invoice (PDF)'."),
    ("report a damaged item", "Send a photo through Orders > 'Report a problem' within 7 days."),
    ("change my order size", "Orders can be changed within one hour of purchase from Orders."),
    ("find my order number", "It is in your confirmation email and under Orders."),
    ("pay with PayPal", "Choose PayPal on the payment step at checkout."),
    ("stop marketing emails", "Click 'Unsubscribe' at the bottom of any marketing email."),
    ("check gift card balance", "Enter the card number under Account > Gift cards."),
    ("speed up delivery", "Choose Express at checkout for next-day delivery."),
    ("enable two-factor login", "Turn it on under Account > Security > Two-factor."),
    ("exchange for another colour", "Return the item and place a new order; exchanges are free."),
    ("fix a failed payment", "Check the card's expiry and billing address, then retry."),
    ("ship abroad", "We ship to 30 countries; pick yours at checkout to see the cost."),
    ("merge two accounts", "Ask an agent in chat; they merge accounts within a day."),
]
PHRASINGS = ["How do I {t}?", "Can you tell me how to {t}?", "I need to {t}. What should I do?",
             "What's the way to {t}?", "Please help me {t}."]
FILLER = [
    "Thank you so much for reaching out to us today, we really appreciate you taking the time to write.",
    "This is actually a question we hear quite often, and it is completely understandable to ask it.",
    "There are a number of things to keep in mind here, and I want to make sure I cover everything.",
    "Before I get to the answer, let me say that we always aim to give you the best experience possible.",
    "I hope this finds you well and that the rest of your day goes smoothly and pleasantly.",
    "Let me walk you through this in as much detail as I can so that nothing is left unclear.",
]
CLOSING = ["Please do not hesitate to get back to us if anything else comes up at all.",
           "We are always here for you and happy to help with any other questions you may have."]


def preference_pairs(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held-out) pairs; held-out topics never appear in train."""
    rng = random.Random(seed)
    held_topics = set(rng.sample(range(len(TOPICS)), 3))
    train, held = [], []
    for i, (topic, answer) in enumerate(TOPICS):
        for phrasing in PHRASINGS:
            filler = rng.sample(FILLER, 2)
            rambling = " ".join(filler + [f"So, to answer you: {answer}", rng.choice(CLOSING)])
            pair = {"prompt": phrasing.format(t=topic), "chosen": answer, "rejected": rambling}
            (held if i in held_topics else train).append(pair)
    return train, held


def mean_words(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[float, list[str]]:
    from tuneloop.models.generation import generate_chat

    generations = generate_chat(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                                max_new_tokens=max_new_tokens, batch_size=len(prompts))
    texts = [g.text for g in generations]
    return sum(len(t.split()) for t in texts) / len(texts), texts


def main(steps: int = 16, out: str = "/tmp/dpo-embedded", n_eval_prompts: int = 6,
         max_new_tokens: int = 48) -> dict:
    from tuneloop.config.recipe import recipe_from_dict
    from tuneloop.models.loading import load_model_and_tokenizer
    from tuneloop.paths import write_json_atomic, write_jsonl_atomic
    from tuneloop.train import run_training

    out_dir = Path(out)
    train, held = preference_pairs()
    write_jsonl_atomic(out_dir / "data" / "train.jsonl", train)
    write_jsonl_atomic(out_dir / "data" / "validation.jsonl", held)
    recipe = recipe_from_dict({
        "name": "dpo-concise", "model": "smollm2-135m-instruct", "method": "dpo",
        "output_dir": str(out_dir / "runs"),
        "data": {"train": str(out_dir / "data" / "train.jsonl"),
                 "validation": str(out_dir / "data" / "validation.jsonl")},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "train": {"max_steps": steps, "learning_rate": 1.0e-3, "batch_size": 4, "max_seq_len": 192,
                  "eval_every": steps, "save_every": steps, "warmup_ratio": 0.05},
        "preference": {"beta": 0.1}, "tracking": {"backend": "none"},
    })
    prompts = [p["prompt"] for p in held[::2]][:n_eval_prompts]  # every topic, varied phrasing
    base, tokenizer = load_model_and_tokenizer(recipe.model)
    words_before, texts_before = mean_words(base, tokenizer, prompts, max_new_tokens)
    del base
    run_dir = run_training(recipe)
    tuned, tokenizer = load_model_and_tokenizer(run_dir)
    words_after, texts_after = mean_words(tuned, tokenizer, prompts, max_new_tokens)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["behaviour"] = {
        "held_out_prompts": len(prompts), "max_new_tokens": max_new_tokens,
        "mean_answer_words_before": round(words_before, 1), "mean_answer_words_after": round(words_after, 1),
        "choice_accuracy_before": summary["before"].get("validation_choice_accuracy"),
        "choice_accuracy_after": summary.get("validation_choice_accuracy"),
        "examples": [{"prompt": p, "before": b, "after": a}
                     for p, b, a in list(zip(prompts, texts_before, texts_after))[:3]],
    }
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", default="/tmp/dpo-embedded")
    args = parser.parse_args()
    result = main(args.steps, args.out)
    b = result["behaviour"]
    print(f"\n{'':28}{'before':>10}{'after':>10}")
    print(f"{'mean answer words':28}{b['mean_answer_words_before']:>10}{b['mean_answer_words_after']:>10}")
    print(f"{'held-out choice accuracy':28}{b['choice_accuracy_before']:>10.2f}{b['choice_accuracy_after']:>10.2f}")
    print(f"{'held-out reward accuracy':28}{'':>10}{result['validation_reward_accuracy']:>10.2f}")
    print(f"{'held-out reward margin':28}{'':>10}{result['validation_reward_margin']:>10.2f}")
    print(f"summary: {Path(args.out) / 'runs' / 'dpo-concise' / 'summary.json'}")
