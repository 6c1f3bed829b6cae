"""Splitting one dataset among simulated clients: IID shares or label-skewed Dirichlet shares.

Pure functions of (labels, clients, seed), so every simulated client computes the same partition
and picks its own share without anything being sent around:

    labels = record_labels(records_path, "label")     # one label per line of the JSONL
    shares = dirichlet_partition(labels, clients=4, alpha=0.5, seed=0)   # [[record index, ...], ...]

Dirichlet partitioning is the usual way to simulate non-IID clients (Hsu et al., 2019): for each
label, the share of its records each client gets is drawn from Dir(alpha); small alpha puts most of a
label on few clients. Every client is guaranteed at least ``min_size`` records (redrawn otherwise).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from tuneloop.errors import UserError
from tuneloop.paths import make_dir, write_json_atomic


def record_label(record: dict, label_field: str) -> str:
    """The record's label: ``record[label_field]``, else the content of its last assistant turn."""
    if record.get(label_field) is not None:
        return str(record[label_field])
    answers = [m.get("content", "") for m in record.get("messages", []) if isinstance(m, dict)
               and m.get("role") == "assistant"]
    return str(answers[-1]) if answers else ""


def read_records(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-empty line (errors name file:line)."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"not valid JSON ({e.msg})", where=f"{path}:{number}") from None
    return records


def iid_partition(n: int, clients: int, seed: int) -> list[list[int]]:
    """Shuffled indices dealt round-robin: shares differ in size by at most one."""
    order = np.random.default_rng(seed).permutation(n)
    return [sorted(order[c::clients].tolist()) for c in range(clients)]


def dirichlet_partition(labels: list[str], clients: int, alpha: float, seed: int,
                        min_size: int = 1, max_tries: int = 100) -> list[list[int]]:
    """Label-skewed shares: each label's records split among clients by proportions ~ Dir(alpha)."""
    if len(labels) < clients * min_size:
        raise UserError(f"{len(labels)} records cannot give {clients} clients {min_size} each",
                        hint="use fewer federated.clients or more data")
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    for _ in range(max_tries):
        shares: list[list[int]] = [[] for _ in range(clients)]
        for label in sorted(by_label):
            indices = rng.permutation(by_label[label])
            proportions = rng.dirichlet([alpha] * clients)
            cuts = (np.cumsum(proportions)[:-1] * len(indices)).astype(int)
            for client, part in enumerate(np.split(indices, cuts)):
                shares[client] += part.tolist()
        if min(len(s) for s in shares) >= min_size:
            return [sorted(s) for s in shares]
    raise UserError(f"could not draw a Dirichlet(alpha={alpha}) partition giving every client {min_size} "
                    f"record(s) in {max_tries} tries", hint="raise federated.alpha or use fewer clients")


def partition_indices(records: list[dict], clients: int, partitioning: str, alpha: float,
                      label_field: str, seed: int) -> list[list[int]]:
    if partitioning == "iid":
        return iid_partition(len(records), clients, seed)
    return dirichlet_partition([record_label(r, label_field) for r in records], clients, alpha, seed)


def label_counts(records: list[dict], shares: list[list[int]], label_field: str) -> list[dict[str, int]]:
    """Per client: how many records of each label it holds (for the run's report)."""
    return [dict(Counter(record_label(records[i], label_field) for i in share)) for share in shares]


def write_client_dirs(records_path: str | Path, out_dir: str | Path, clients: int, partitioning: str,
                      alpha: float, label_field: str, seed: int) -> list[Path]:
    """``out/client-<k>/train.jsonl`` per client (for a deployment rehearsal), plus ``partition.json``."""
    lines = [line for line in Path(records_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    records = read_records(records_path)
    shares = partition_indices(records, clients, partitioning, alpha, label_field, seed)
    out = make_dir(out_dir)
    directories = []
    for client, share in enumerate(shares):
        directory = make_dir(out / f"client-{client}")
        (directory / "train.jsonl").write_text("".join(lines[i] + "\n" for i in share), encoding="utf-8")
        directories.append(directory)
    write_json_atomic(out / "partition.json", {
        "source": str(records_path), "clients": clients, "partitioning": partitioning, "alpha": alpha,
        "seed": seed, "sizes": [len(s) for s in shares], "labels": label_counts(records, shares, label_field)})
    return directories
