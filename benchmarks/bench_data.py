"""The training benchmark's data: bundled support chats plus Banking77 as chat, split once, reproducibly.

Both trainers read the same ``train.jsonl`` / ``validation.jsonl`` written here (chat records, one per
line). The bundled support export is deliberately messy (broken lines, duplicates, PII), so it goes
through ``tuneloop.data.prepare`` first and its clean records are used. Banking77 rows become ``user =
query, assistant = intent label``, as ``tuneloop data prepare --task classification`` renders them.
Validation chats are held out from both sources and never trained on.

Run alone to look at the files: ``python benchmarks/bench_data.py --quick``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from common import SHARED_DATA, ensure_workdir

SUPPORT_CHATS = Path(__file__).resolve().parents[1] / "src/tuneloop/quickstart/data/support_chats.jsonl"
BANKING77 = SHARED_DATA / "banking77" / "train.csv"
# (support train, banking train, support validation, banking validation)
SIZES = {"quick": (64, 64, 32, 32), "full": (256, 768, 48, 80)}


def support_chats(work: Path) -> list[dict]:
    """The clean support chats: ``prepare`` with no split (everything lands in train.jsonl), cached."""
    from tuneloop.data.prepare import PrepareOptions, prepare

    prepared = work / "support-prepared"
    if not (prepared / "train.jsonl").is_file():
        prepare([SUPPORT_CHATS], prepared, PrepareOptions(task="sft", split=(1.0, 0.0, 0.0)))
    return [{"messages": json.loads(line)["messages"]}
            for line in (prepared / "train.jsonl").read_text().splitlines() if line.strip()]


def banking77_chats() -> list[dict]:
    with open(BANKING77, newline="") as f:
        return [{"messages": [{"role": "user", "content": row["text"]},
                              {"role": "assistant", "content": row["category"]}]}
                for row in csv.DictReader(f)]


def build(mode: str, seed: int = 0) -> dict:
    """Write the benchmark's train/validation files; returns their paths and counts."""
    n_sup_train, n_bank_train, n_sup_val, n_bank_val = SIZES[mode]
    rng = random.Random(seed)
    out = ensure_workdir() / f"data-{mode}"
    out.mkdir(parents=True, exist_ok=True)
    support, banking = support_chats(out.parent), banking77_chats()
    rng.shuffle(support)
    rng.shuffle(banking)
    if n_sup_train + n_sup_val > len(support):  # the bundled file is small: keep validation whole
        n_sup_train = len(support) - n_sup_val
    train = support[:n_sup_train] + banking[:n_bank_train]
    validation = support[n_sup_train:n_sup_train + n_sup_val] + banking[n_bank_train:n_bank_train + n_bank_val]
    rng.shuffle(train)
    for name, rows in (("train", train), ("validation", validation)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"train": str(out / "train.jsonl"), "validation": str(out / "validation.jsonl"),
            "n_train": len(train), "n_validation": len(validation),
            "sources": {"support_chats": [n_sup_train, n_sup_val], "banking77": [n_bank_train, n_bank_val]}}


def read_chats(path: str) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in Path(path).read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(build("quick" if parser.parse_args().quick else "full"), indent=2))
