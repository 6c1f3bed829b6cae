"""Writes the small chat fixtures used by the training tests (rerun to regenerate them).

    python tests/fixtures_train/make_fixtures.py
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "pear", "plum"]


def conversation(rng: random.Random) -> dict:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    kind = rng.choice(["add", "colour", "fruit"])
    if kind == "add":
        messages = [{"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
    elif kind == "colour":
        colour = rng.choice(COLOURS)
        messages = [{"role": "system", "content": "You answer in one short sentence."},
                    {"role": "user", "content": f"Name the colour: {colour}."},
                    {"role": "assistant", "content": f"The colour is {colour}."}]
    else:
        fruit = rng.choice(FRUITS)
        messages = [{"role": "user", "content": f"I like {fruit}s."},
                    {"role": "assistant", "content": f"{fruit.capitalize()}s are tasty."},
                    {"role": "user", "content": "Why?"},
                    {"role": "assistant", "content": f"Because a {fruit} is sweet."}]
    return {"messages": messages}


def write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    rng = random.Random(0)
    records = [dict(conversation(rng), id=f"c{i}", source=f"gen:{i}") for i in range(64)]
    write(HERE / "chat_train.jsonl", records[:48])
    write(HERE / "chat_validation.jsonl", records[48:])
    # No assistant turns at all: nothing to learn from.
    write(HERE / "no_trainable.jsonl", [{"messages": [{"role": "user", "content": f"hello {i}"}]}
                                        for i in range(5)])
