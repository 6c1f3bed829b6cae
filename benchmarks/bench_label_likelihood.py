"""Likelihood scoring of a 77-label classifier on the embedded model: the cached, batched scorer vs a
plain full-sequence reference (one forward pass per prompt and label), on Banking77 queries.

Both give each label's summed log-probability as the whole assistant answer; the script checks that
they pick the same labels (and how far the scores differ), and times both per prompt.

``python benchmarks/bench_label_likelihood.py [--quick]`` writes results/label_likelihood.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import bench_data
from common import REPO, write_result

sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from test_eval_classify import reference_log_likelihoods
    from tuneloop.evaluate.classification import label_log_likelihoods
    from tuneloop.models.loading import load_model_and_tokenizer

    torch.set_num_threads(2)
    rows = bench_data.banking77_chats()
    labels = sorted({r["messages"][1]["content"] for r in rows})
    random.Random(2).shuffle(rows)
    n_fast, n_slow = (4, 1) if args.quick else (32, 3)
    prompts = [r["messages"][:1] for r in rows[:n_fast]]
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    label_log_likelihoods(model, tokenizer, prompts[:1], labels)  # warm-up
    started = time.perf_counter()
    fast = label_log_likelihoods(model, tokenizer, prompts, labels)
    fast_s = (time.perf_counter() - started) / n_fast
    started = time.perf_counter()
    slow = reference_log_likelihoods(model, tokenizer, prompts[:n_slow], labels)
    slow_s = (time.perf_counter() - started) / n_slow
    truth = [r["messages"][1]["content"] for r in rows[:n_fast]]
    predicted = [labels[j] for j in fast.argmax(axis=1)]
    result = {
        "model": "smollm2-135m-instruct", "dtype": "float32", "labels": len(labels), "threads": 2,
        "prompts_fast": n_fast, "prompts_reference": n_slow,
        "fast_s_per_prompt": round(fast_s, 3), "reference_s_per_prompt": round(slow_s, 3),
        "speedup": round(slow_s / fast_s, 1),
        "same_labels_as_reference": bool((fast[:n_slow].argmax(1) == slow.argmax(1)).all()),
        "max_abs_score_difference": float(np.abs(fast[:n_slow] - slow).max()),
        "base_model_accuracy_on_these_prompts": sum(p == t for p, t in zip(predicted, truth)) / n_fast,
        "chance": round(1 / len(labels), 4),
    }
    write_result("label_likelihood", result)
    print(result)
    return result


if __name__ == "__main__":
    main()
