"""Ranking catalog models for a task, a memory budget and a licence filter, with reasons.

Score: fits the memory budget with LoRA (else QLoRA on CUDA), task strength, and the largest model
that fits (quality grows with size), so a 24 GB laptop is offered a 1-3B model, not a 135M one.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.models.catalog import CATALOG, ModelCard
from tuneloop.models.estimate import estimate

TASKS = ("chat", "classification", "summarization", "code", "reasoning", "multilingual", "cpu")


@dataclass
class Recommendation:
    card: ModelCard
    method: str
    memory_gb: float
    score: float
    reasons: list[str]


def recommend(task: str, memory_gb: float, commercial_only: bool = False, seq_len: int = 512,
              batch_size: int = 4, cuda: bool = False) -> list[Recommendation]:
    ranked = []
    for card in CATALOG:
        if commercial_only and not card.commercial:
            continue
        fit = _fitting_method(card, memory_gb, seq_len, batch_size, cuda)
        if fit is None:
            continue
        method, need = fit
        reasons = [f"{method} needs ~{need:.1f} GB at seq {seq_len} x batch {batch_size} "
                   f"(budget {memory_gb:g} GB)"]
        score = card.parameters / 1e9
        if task in card.strengths:
            score *= 2.0
            reasons.append(f"strong at {task}")
        if card.commercial:
            reasons.append(f"licence {card.license}: commercial use allowed")
        else:
            reasons.append(f"licence {card.license}: no commercial use")
        reasons.append(f"{card.parameters / 1e9:.2f}B parameters, {card.context} tokens of context")
        ranked.append(Recommendation(card, method, need, score, reasons))
    return sorted(ranked, key=lambda r: -r.score)


def _fitting_method(card, memory_gb, seq_len, batch_size, cuda):
    methods = ("lora", "qlora") if cuda else ("lora",)
    for method in methods:
        need = estimate(card, method, seq_len, batch_size, measure_peak=False, device="cpu").total_gb
        if need <= memory_gb:
            return method, need
    return None
