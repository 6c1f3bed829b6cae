"""Which prompt tokens drove an answer: Captum's LLM attribution on a chat prompt.

    from tuneloop.explain.attribution import attribute_answer
    result = attribute_answer(model, tokenizer, [{"role": "user", "content": "..."}], target=None)
    result.top(3)  # the three prompt tokens that raised the answer's log-probability most

The prompt is rendered through the one chat template (:mod:`tuneloop.chat.template`), exactly as
evaluation and serving feed it. Only the tokens of the last user message are *features*: the system
prompt and the template's role markers stay fixed, because an explanation that says "the answer came
from ``<|im_start|>``" tells a user nothing. The target (the answer being explained) is the given
text, or the model's own greedy answer (as ``eval`` generates it) when none is given.

Methods (Captum 0.9, checked against torch 2.13 and transformers 5):

* ``ablation``: ``FeatureAblation`` in ``LLMAttribution``; each token in turn is replaced by the pad
  token and the drop in the target's log-probability is its score. Exact, one forward per token.
* ``shapley``: ``ShapleyValueSampling`` in ``LLMAttribution`` (``samples`` permutations); accounts for
  tokens that only matter together, at ``samples`` times the cost.
* ``integrated-gradients``: ``LayerIntegratedGradients`` on the input embeddings in
  ``LLMGradientAttribution`` (``steps`` interpolation steps from a zero embedding).

Scores are in log-probability units of the target (nats): positive means the token made the answer
more likely.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tuneloop.chat.template import render_text, tokenize_text
from tuneloop.errors import UserError
from tuneloop.models.generation import generate_ids

METHODS = ("ablation", "shapley", "integrated-gradients")


@dataclass
class TokenAttribution:
    """One explained answer: prompt-token scores towards the target, overall and per answer token."""

    method: str
    input_tokens: list[str]  # the last user message, token by token (text pieces)
    output_tokens: list[str]  # the target, token by token
    scores: list[float]  # per input token: effect on the target's total log-probability
    per_output: list[list[float]]  # [output token][input token]
    target: str
    target_log_prob: float
    generated: bool  # the target is the model's own greedy answer

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        order = sorted(range(len(self.scores)), key=lambda i: -self.scores[i])
        return [(self.input_tokens[i], self.scores[i]) for i in order[:k]]

    def to_json(self) -> dict:
        return asdict(self)


def _text_pieces(text: str, offsets: list[tuple[int, int]]) -> list[str]:
    return [text[start:end] for start, end in offsets]


def user_token_mask(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool], list[str]]:
    """Prompt ids (with the generation header), which of them belong to the last user message, and
    every token's text piece."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise UserError("the conversation has no user message to explain", hint="add a user turn")
    last = users[-1]
    text = render_text(tokenizer, messages, add_generation_prompt=True)
    # The content starts after everything rendered before this message (and its role header).
    before = render_text(tokenizer, messages[:last]) if last else ""
    start = text.find(messages[last]["content"], len(before))
    end = start + len(messages[last]["content"])
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    if ids != tokenize_text(tokenizer, text):  # the same ids training and serving use, or no explanation
        raise RuntimeError("offset tokenization differs from the chat template's tokenization")
    mask = [start >= 0 and s < end and e > start and e > s for s, e in offsets]
    return ids, mask, _text_pieces(text, offsets)


def chat_prompt_input(tokenizer, messages: list[dict]):
    """A Captum ``TextTokenInput`` whose features are the last user message's tokens."""
    import torch
    from captum.attr import TextTokenInput

    ids, mask, pieces = user_token_mask(tokenizer, messages)

    class ChatPromptInput(TextTokenInput):
        # TextTokenInput tokenizes a string itself; a chat prompt's ids and feature mask come from the
        # template instead, so the fields its to_model_input() reads are set directly.
        def __init__(self):
            self.inp_tensor = torch.tensor([ids])
            self.itp_mask = torch.tensor([mask])
            self.itp_tensor = self.inp_tensor[self.itp_mask].unsqueeze(0)
            self.skip_tokens = None
            self.values = [p for p, m in zip(pieces, mask) if m]
            self.tokenizer = tokenizer
            self.n_itp_features = len(self.values)
            self.baselines = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    return ChatPromptInput()


def _target_ids(model, tokenizer, prompt_ids: list[int], target: str | None, max_new_tokens: int) -> list[int]:
    if target is not None:
        ids = tokenize_text(tokenizer, target)
        if not ids:
            raise UserError("the target text is empty", where="--target", hint="give the answer to explain")
        return ids
    ids = generate_ids(model, tokenizer, [prompt_ids], max_new_tokens)[0]
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]  # explain the words; the stop token's probability is another question
    return ids or [tokenizer.eos_token_id]


def target_log_prob(model, prompt_ids: list[int], target_ids: list[int]) -> float:
    """Total log-probability of ``target_ids`` after ``prompt_ids`` (teacher-forced, one forward)."""
    import torch

    ids = torch.tensor([prompt_ids + target_ids], device=next(model.parameters()).device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    return float(log_probs[torch.arange(len(target_ids)), torch.tensor(target_ids)].sum())


def _captum_attribution(model, tokenizer, method: str, samples: int, steps: int):
    from captum.attr import (FeatureAblation, LayerIntegratedGradients, LLMAttribution, LLMGradientAttribution,
                             ShapleyValueSampling)

    if method == "ablation":
        return LLMAttribution(FeatureAblation(model), tokenizer), {"forward_in_tokens": False}
    if method == "shapley":
        return LLMAttribution(ShapleyValueSampling(model), tokenizer), {"forward_in_tokens": False,
                                                                         "n_samples": samples}
    if method == "integrated-gradients":
        layer = LayerIntegratedGradients(model, model.get_input_embeddings())
        return LLMGradientAttribution(layer, tokenizer), {"n_steps": steps}
    raise UserError(f"unknown attribution method {method!r}", where="--method", hint=f"use one of {', '.join(METHODS)}")


def attribute_answer(model, tokenizer, messages: list[dict], target: str | None = None,
                     method: str = "ablation", max_new_tokens: int = 32, samples: int = 8,
                     steps: int = 16) -> TokenAttribution:
    """Attribute ``target`` (or the model's greedy answer) to the last user message's tokens."""
    import torch

    inp = chat_prompt_input(tokenizer, messages)
    prompt_ids = inp.inp_tensor[0].tolist()
    if inp.n_itp_features == 0:
        raise UserError("the user message has no tokens to explain", hint="give a non-empty prompt")
    target_ids = _target_ids(model, tokenizer, prompt_ids, target, max_new_tokens)
    attributor, options = _captum_attribution(model, tokenizer, method, samples, steps)
    torch.manual_seed(0)  # Shapley sampling draws permutations
    result = attributor.attribute(inp, target=torch.tensor(target_ids), **options)
    per_output = result.token_attr if result.token_attr is not None else result.seq_attr.unsqueeze(0)
    return TokenAttribution(
        method=method, input_tokens=list(inp.values),
        output_tokens=[tokenizer.decode([i]) for i in target_ids],
        scores=[float(v) for v in result.seq_attr.detach().cpu()],
        per_output=[[float(v) for v in row] for row in per_output.detach().cpu()],
        target=tokenizer.decode(target_ids), target_log_prob=target_log_prob(model, prompt_ids, target_ids),
        generated=target is None,
    )
