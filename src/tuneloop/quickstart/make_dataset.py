"""Generate the quickstart's bundled data from the Brightcart fact table (``store_facts.py``).

Run ``python -m tuneloop.quickstart.make_dataset`` to rewrite ``data/support_chats.jsonl`` and
``data/heldout.jsonl``; the output is deterministic (fixed seed), and a test checks that the committed
files are exactly what this script writes.

``support_chats.jsonl`` looks like a real support export, mess included, so that ``data prepare`` has
work to do:
* one conversation per training phrasing (question or paraphrase) of every fact, some with a
  greeting, a thank-you or a line of context in front, answered with one of the team's phrasings;
* order and account tickets (late parcels, double charges, log-in trouble) in which customers paste
  e-mail addresses, phone numbers and card numbers;
* a few malformed lines, exact duplicates (the same line exported twice) and near-duplicates
  (the same question re-sent with a typo).

``heldout.jsonl`` asks every fact again in words the training file never uses; each record has
``facts`` (substrings a correct answer must contain) and a reference answer.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tuneloop.paths import write_jsonl_atomic, write_text_atomic
from tuneloop.quickstart.store_facts import PRODUCTS, SYSTEM_PROMPT, Fact, all_facts

DATA_DIR = Path(__file__).with_name("data")
TRAIN_FILE = "support_chats.jsonl"
HELDOUT_FILE = "heldout.jsonl"
SEED = 6

GREETINGS = ("", "", "", "Hi! ", "Hello, ", "Hey there. ", "Good morning! ", "Quick question: ")
THANKS = ("", "", "", " Thanks!", " Thank you.", " Thanks in advance.")
CONTEXTS = ("I ordered from you last week. ", "I'm about to place my first order. ",
            "I bought a gift for my sister. ", "I'm comparing a few online shops. ")
FIRST_NAMES = ("Maria", "James", "Aisha", "Tom", "Priya", "Lukas", "Chen", "Sofia", "Omar", "Grace")
LAST_NAMES = ("Lopez", "Miller", "Khan", "Nguyen", "Novak", "Okafor", "Berg", "Rossi", "Walsh", "Sato")


def chat(*turns: str) -> dict:
    """A conversation: the system prompt, then alternating user and assistant turns."""
    roles = ("user", "assistant")
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}]
            + [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]}


def fact_conversations(fact: Fact, rng: random.Random) -> list[dict]:
    """One conversation per training question and paraphrase; the first two questions also come with
    a line of context."""
    conversations = []
    for i, question in enumerate(fact.questions + fact.paraphrases):
        text = rng.choice(GREETINGS) + question + rng.choice(THANKS)
        conversations.append(chat(text, fact.answers[i % len(fact.answers)]))
    for i, question in enumerate(fact.questions[:2]):
        text = rng.choice(CONTEXTS) + question
        conversations.append(chat(text, fact.answers[(i + 1) % len(fact.answers)]))
    return conversations


class Customer:
    """Made-up personal data of the kind customers paste into support chats (redacted by prepare)."""

    def __init__(self, rng: random.Random):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        self.name = f"{first} {last}"
        self.email = f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@example.com"
        self.phone = f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        self.card = luhn_card(rng)
        self.order = f"BC-{rng.randint(100000, 999999)}"
        self.product = rng.choice(PRODUCTS)


def luhn_card(rng: random.Random) -> str:
    """A 16-digit number starting with 4 that passes the Luhn check, grouped in fours."""
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):  # the check digit will sit right of these
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    digits.append((10 - total % 10) % 10)
    text = "".join(map(str, digits))
    return " ".join(text[i : i + 4] for i in range(0, 16, 4))


def ticket_conversations(rng: random.Random, per_kind: int = 4) -> list[dict]:
    """Order and account tickets; each kind written a few times with different customers."""
    kinds = (
        lambda c: chat(f"Hi, this is {c.name}. My order {c.order} still hasn't arrived. Reach me at {c.email}.",
                       "Sorry for the wait! Standard delivery takes 4 to 6 business days; you can follow your "
                       "parcel under My Orders with Track package."),
        lambda c: chat(f"I was charged twice for order {c.order} on my card {c.card}. Please fix it!",
                       "I'm sorry about that. Please never share card numbers in chat. The second charge is a "
                       "hold that disappears on its own; if it is still there after 8 business days, reply "
                       "here and we will refund it."),
        lambda c: chat(f"Can I change the delivery address for {c.order}? My number is {c.phone}.",
                       "You can change the address within 2 hours of ordering under My Orders; after that the "
                       "parcel is already with the carrier."),
        lambda c: chat(f"I ordered the {c.product.name} but got something else. Order {c.order}, {c.email}.",
                       f"Sorry for the mix-up! We'll ship the correct {c.product.name} today, and you can keep "
                       "the wrong item."),
        lambda c: chat(f"Please delete my account, the e-mail is {c.email}.",
                       "You can delete your account under Account settings, then Privacy. The deletion is "
                       "final after 14 days."),
        lambda c: chat(f"I can't sign in. My e-mail is {c.email}.",
                       "Click Forgot password on the sign-in page; the reset link is valid for 30 minutes.",
                       "The link says it has expired.",
                       "Links expire after 30 minutes for security. Request a new one and use it right away."),
        lambda c: chat(f"I returned order {c.order} and I'm still waiting for my money. Card {c.card}.",
                       "Please don't share card numbers here. Refunds reach your original payment method "
                       "within 8 business days after we receive the return."),
        lambda c: chat(f"My {c.product.name} arrived broken. Call me on {c.phone}.",
                       "Sorry about that! Please file a Damage Report with a photo under My Orders; we send a "
                       "free replacement."),
        lambda c: chat(f"How much is the {c.product.name}?",
                       f"The {c.product.name} costs {c.product.price}.",
                       "And what would shipping be?",
                       "Standard shipping costs $4.90, and it is free on orders over $60."),
        lambda c: chat(f"Hello, {c.name} here ({c.email}). Do you ship to Canada?",
                       "Yes, Canada is one of the 18 countries we ship to."),
    )
    return [kind(Customer(rng)) for kind in kinds for _ in range(per_kind)]


def near_duplicate(record: dict, rng: random.Random) -> dict:
    """The same conversation re-sent with a typo in the question and a trailing 'pls'."""
    messages = [dict(m) for m in record["messages"]]
    words = messages[1]["content"].split()
    i = rng.randrange(len(words))
    if len(words[i]) > 3:  # swap two inner letters: "return" -> "retrun"
        w = words[i]
        words[i] = w[:1] + w[2] + w[1] + w[3:]
    messages[1]["content"] = " ".join(words) + " pls"
    return {"messages": messages}


MALFORMED_LINES = (
    # An export cut off mid-line.
    '{"messages": [{"role": "user", "content": "Do you ship to Mexico?"}, {"role": "assistant", "content": "We ship',
    # A role that is not system/user/assistant.
    json.dumps({"messages": [{"role": "user", "content": "Is the Orbit backpack waterproof?"},
                             {"role": "bot", "content": "The Orbit backpack is water-resistant."}]}),
    # An empty answer.
    json.dumps({"messages": [{"role": "user", "content": "Where is my order?"},
                             {"role": "assistant", "content": "  "}]}),
    # A ticket with no answer yet.
    json.dumps({"messages": [{"role": "user", "content": "Hello? Anyone there?"}]}),
    # messages as a string instead of a list.
    json.dumps({"messages": "user: what are your hours? assistant: 8am to 8pm"}),
)


def build_training_lines(seed: int = SEED) -> list[str]:
    """The lines of support_chats.jsonl: clean conversations, tickets and the mess, shuffled."""
    rng = random.Random(seed)
    records = [c for fact in all_facts() for c in fact_conversations(fact, rng)]
    records += ticket_conversations(rng)
    records += [near_duplicate(r, rng) for r in rng.sample(records, 8)]
    # A few answers pasted from a word processor: curly quotes broken into mojibake (ftfy repairs them).
    for r in rng.sample(records, 3):
        r["messages"][-1]["content"] = r["messages"][-1]["content"].replace("'", "\u00e2\u20ac\u2122")
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines += rng.sample(lines, 8)  # exact duplicates: the same ticket exported twice
    lines += MALFORMED_LINES
    rng.shuffle(lines)
    return lines


def build_heldout_records() -> list[dict]:
    """Every held-out question of every fact, with the facts to check and a reference answer."""
    records = []
    for fact in all_facts():
        for j, question in enumerate(fact.heldout):
            record = chat(question, fact.answers[0])
            records.append({"id": f"{fact.key}.{j + 1}", **record, "facts": list(fact.facts)})
    return records


def write_dataset(out_dir: Path = DATA_DIR) -> tuple[Path, Path]:
    train, heldout = out_dir / TRAIN_FILE, out_dir / HELDOUT_FILE
    write_text_atomic(train, "\n".join(build_training_lines()) + "\n")
    write_jsonl_atomic(heldout, build_heldout_records())
    return train, heldout


if __name__ == "__main__":
    for path in write_dataset():
        print(f"wrote {path} ({sum(1 for _ in path.open())} lines)")
