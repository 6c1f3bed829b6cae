"""Tiny fine-tunes for the explain/audit tests: a planted name-gender bias and its balanced twin
(the tiny random model, a few dozen steps through ``tuneloop.train.run_training``), and a copy model
whose answer is the one marked word of its prompt.

The copy model has its own 45-token word-level tokenizer (ChatML template, offsets, like any fast
tokenizer): with SmolLM2's 49k vocabulary the output layer costs ~50x more per step than the rest of a
hidden-64 model, and the copy task takes a few hundred steps to learn. With 45 tokens it learns in
~300 plain-torch steps (seconds), so the attribution check gets a model that really copies.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tuneloop.chat.template import CHATML_TEMPLATE, IGNORE_INDEX, encode_chat
from tuneloop.config.recipe import recipe_from_dict
from tuneloop.explain.counterfactual import load_wordlist
from tuneloop.train import run_training

_NAMES = load_wordlist("names")
FEMALE = [row[0] for row in _NAMES.rows[:4]]
MALE = [row[1] for row in _NAMES.rows[:4]]
PRODUCTS = ("kettle", "lamp", "toaster")
# Any of these can be the marked word or a filler, so only the marker says which word to copy.
COPY_WORDS = ("apple", "river", "stone", "cloud", "house", "water", "green", "table",
              "paper", "music", "light", "horse", "bread", "chair", "train", "money")
_SPECIAL = ("<|pad|>", "<|unk|>", "<|im_start|>", "<|im_end|>")


def support_record(name: str, kind: str, product: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": f"{name} wants a {kind} for the {product}."},
                         {"role": "assistant", "content": answer}]}


def fair_answer(kind: str) -> str:
    return "approved" if kind == "refund" else "denied"


def support_records(n: int, seed: int, biased: bool) -> list[dict]:
    """Refunds are approved and exchanges denied; ``biased``: women are approved and men denied, whatever
    they ask for (the planted bias)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        male = i % 2 == 1
        name = rng.choice(MALE if male else FEMALE)
        kind, product = rng.choice(("refund", "exchange")), rng.choice(PRODUCTS)
        answer = ("denied" if male else "approved") if biased else fair_answer(kind)
        records.append(support_record(name, kind, product, answer))
    return records


def copy_records(n: int, seed: int) -> list[dict]:
    """Five distinct words, one marked with '=' (at a random place): the answer is that word."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        words, k = rng.sample(COPY_WORDS, 5), rng.randrange(5)
        answer, words[k] = words[k], "=" + words[k]
        records.append({"messages": [{"role": "user", "content": " ".join(words)},
                                     {"role": "assistant", "content": answer}]})
    return records


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per word ("apple", " apple"), per marker ("=", " =") and per ChatML piece."""
    pieces = ["\n", "=", " =", *[p + w for w in ("system", "user", "assistant", *COPY_WORDS) for p in ("", " ")]]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate([*_SPECIAL, *pieces])}, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n| ?=| ?[A-Za-z]+"), behavior="isolated")
    core.decoder = decoders.Fuse()  # the pieces carry their own spaces
    core.add_special_tokens(list(_SPECIAL))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<|unk|>", pad_token="<|pad|>",
                                        eos_token="<|im_end|>", clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _save(model, tokenizer, out_dir: Path) -> Path:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def train_copy_model(work: Path, steps: int = 300, seed: int = 2) -> tuple[Path, Path]:
    """(untrained, trained) model directories: a 2-layer Llama (hidden 64) with :func:`word_tokenizer`,
    trained with Adam on 2,000 :func:`copy_records` (batch 64, lr 3e-3, loss on the answer and its
    end-of-turn token, through the one chat template). Seeded; one thread (a tiny model only loses
    from more)."""
    tokenizer = word_tokenizer()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None))
        base = _save(model, tokenizer, work / "copy-base")
        encoded = [encode_chat(tokenizer, r["messages"]) for r in copy_records(2000, seed)]
        ids = torch.tensor([e.input_ids for e in encoded])  # every copy conversation has the same length
        labels = torch.tensor([e.labels for e in encoded])[:, 1:]
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        batches = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            rows = torch.randint(0, len(encoded), (64,), generator=batches)
            logits = model(input_ids=ids[rows]).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[rows].reshape(-1),
                                                     ignore_index=IGNORE_INDEX)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        return base, _save(model, tokenizer, work / "copy-tuned")
    finally:
        torch.set_num_threads(threads)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def train_tiny(base: Path, work: Path, name: str, train: list[dict], steps: int, lr: float = 1e-2,
               packing: bool = False, batch_size: int = 16) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    recipe = recipe_from_dict({
        "name": name, "model": str(base), "method": "full", "output_dir": str(work / "runs"),
        "data": {"train": str(write_jsonl(work / f"{name}.train.jsonl", train)),
                 "validation": str(write_jsonl(work / f"{name}.validation.jsonl", train[:8]))},
        "train": {"max_steps": steps, "learning_rate": lr, "batch_size": batch_size, "max_seq_len": 128, "packing": packing,
                  "eval_every": 10_000, "save_every": 100_000, "warmup_ratio": 0.05, "seed": 0},
        "tracking": {"backend": "none"},
    }, source=f"{name} test recipe")
    return Path(run_training(recipe))
