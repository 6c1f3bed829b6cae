"""Training data as tensors: read chat JSONL, tokenise with the one chat template, check, pack, collate.

Every step is a pure function so methods built on this engine (DPO, QAT, mixtures) and the benchmark
reuse them:

    records = read_chat_jsonl(path)                       # [(source, messages)], errors name file:line
    samples, report = tokenize_records(tokenizer, records, max_seq_len, overlong="drop")
    units = batch_units(samples, batch_tokens=None)        # one example per unit (or token-budget rows)
    batch = collate_micro_batch(units[:8], pad_id, packing=True)  # input_ids, position_ids, targets

Batch semantics are the ones TRL, Axolotl and LLaMA-Factory use: ``train.batch_size`` counts
*examples* per micro-batch, so the number of optimizer steps does not depend on packing. Packing is
padding-free batching: a micro-batch's examples are laid end to end in one row (no padding tokens,
no attention across examples); without packing each example is its own row, padded to the longest.
Only ``train.batch_tokens`` (asked for explicitly) batches by a token budget instead: then a unit is a
best-fit packed row of up to that many tokens and one unit is one micro-batch.

A row is a list of samples laid end to end. Position ids restart at 0 for each sample, which is how
transformers builds a block-diagonal causal mask (no attention across samples) when no 2-D attention
mask is passed. Padding at the end of a row is one more "sample" of its own, with no targets.
Targets are the labels shifted left by one *within each sample*, so the last token of one sample
never predicts the first token of the next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.chat.template import (IGNORE_INDEX, Conversation, EncodedChat, TemplateError, encode_chat,
                                    render_text)
from tuneloop.data.ingest import check_encoding
from tuneloop.data.records import to_canonical
from tuneloop.data.validate import Issue, validate_record
from tuneloop.errors import UserError
from tuneloop.train.mixture import mix_rows, task_probabilities

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Sample:
    """One tokenised conversation: ids, labels (-100 where masked) and where it came from."""

    input_ids: list[int]
    labels: list[int]
    source: str = ""
    task: str = ""  # the data.mixture task it came from (multi-task training)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class TokenizeReport:
    """Counts for the run's report: what was kept, dropped, truncated, and why."""

    total: int = 0
    kept: int = 0
    dropped_overlong: int = 0
    truncated_prompt: int = 0
    no_trainable_tokens: int = 0
    lengths: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "file:line: message", first few only

    def add_problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("lengths",)}


# ---------------------------------------------------------------------------------------------
# Reading


def read_chat_jsonl(path: str | Path) -> list[tuple[str, list[dict]]]:
    """``[(source "file:line", messages)]`` from a JSONL of chat records; extra keys are ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training data not found: {path}",
                        hint="point data.train at a JSONL file, e.g. from `tuneloop data prepare`")
    check_encoding(path)
    records = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError("not UTF-8 text", where=where,
                                hint="training data is JSONL saved as UTF-8; `tuneloop data prepare` writes it") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"not valid JSON ({e.msg})", where=where,
                                hint="one JSON object per line; `tuneloop data validate` checks a file") from None
            records.append((where, _chat_messages(obj, where)))
    if not records:
        raise UserError("no records", where=str(path), hint="the file is empty")
    return records


def _chat_messages(obj, where: str) -> Conversation:
    """The record's conversation, through the same validator and converter as ``data validate``.

    Any SFT shape works (chat, ShareGPT, instruction, prompt/completion incl. TRL's conversational
    form), so what validation accepts is what training trains on: ``weight`` 0 turns are kept as
    context (masked by :func:`encode_chat`), tool calls and ``tools`` go to the chat template.
    """
    shape, issues = validate_record(obj, task="sft")
    if shape == "text" and not issues:
        issues = [Issue("text", "a plain-text record; SFT trains on conversations")]
    if issues:
        kind = "preference" if shape in ("preference", "unpaired_preference") else shape or "unknown"
        first = issues[0]
        raise UserError(f"{first.field}: {first.message} ({kind} record)", where=where,
                        hint="`tuneloop data validate FILE` lists every problem; preference data trains "
                             "with method dpo/orpo/kto")
    record = to_canonical(obj, shape)
    return Conversation(record["messages"], tools=record.get("tools"))


# ---------------------------------------------------------------------------------------------
# Tokenising and per-sample checks


def check_sample(encoded: EncodedChat, bos_id: int | None, eos_id: int | None,
                 bos_is_turn_marker: bool, check_eos: bool = True) -> str | None:
    """Why this sample would train the wrong thing, or None if it is sound.

    * BOS: models with a real BOS (Llama-3's <|begin_of_text|>) must have exactly one, at the start.
      In ChatML templates (SmolLM2, Qwen) the "BOS" is <|im_start|>, which opens every turn, so there
      the check is only that the sample starts with it.
    * Every supervised assistant turn must end with a supervised EOS, or the model never learns to stop.
    * At least one trainable token.
    """
    ids, labels = encoded.input_ids, encoded.labels
    if bos_id is not None:
        if bos_is_turn_marker:
            if ids and ids[0] != bos_id:
                return "does not start with the template's turn marker"
        elif ids.count(bos_id) != 1 or ids[0] != bos_id:
            return f"expected exactly one BOS at the start, found {ids.count(bos_id)}"
    if not any(label != IGNORE_INDEX for label in labels):
        return "no trainable tokens"
    if eos_id is not None and check_eos:
        for start, end in encoded.assistant_spans:
            if labels[end - 1] != eos_id:
                return "an assistant turn does not end with a supervised EOS"
    return None


def truncate_prompt(encoded: EncodedChat, max_len: int) -> EncodedChat | None:
    """Cut tokens from the start of the prompt (before the first trained token); None if that can't fit.

    The response is never cut: if the tokens from the first trained token on exceed ``max_len``, the
    sample cannot be saved this way.
    """
    first = next((i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX), None)
    cut = len(encoded.input_ids) - max_len
    if first is None or cut > first:
        return None
    spans = [(s - cut, e - cut) for s, e in encoded.assistant_spans]
    return EncodedChat(encoded.input_ids[cut:], encoded.labels[cut:], spans)


def tokenize_records(tokenizer, records: list[tuple[str, list[dict]]], max_seq_len: int,
                     overlong: str = "drop", train_on: str = "assistant",
                     show_progress: bool = False) -> tuple[list[Sample], TokenizeReport]:
    """Encode, check and apply the overlong policy; problems are counted, never silent."""
    from tqdm.auto import tqdm

    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    bos_is_turn_marker = _bos_is_turn_marker(tokenizer)
    report = TokenizeReport(total=len(records))
    samples = []
    for source, messages in tqdm(records, desc="tokenising", unit="sample", disable=not show_progress):
        try:
            encoded = encode_chat(tokenizer, messages, train_on=train_on)
        except TemplateError as e:
            raise UserError(str(e), where=source) from None
        if len(encoded.input_ids) > max_seq_len:
            encoded = _apply_overlong(encoded, max_seq_len, overlong, source, report)
            if encoded is None:
                continue
        problem = check_sample(encoded, bos_id, eos_id, bos_is_turn_marker, train_on == "assistant")
        if problem == "no trainable tokens":
            report.no_trainable_tokens += 1
            report.add_problem(f"{source}: {problem}")
            continue
        if problem:
            raise UserError(f"{problem}; the chat template or tokenizer is inconsistent", where=source,
                            hint="check the model's chat template (tokenizer_config.json)")
        samples.append(Sample(encoded.input_ids, encoded.labels, source))
        report.lengths.append(len(encoded.input_ids))
    report.kept = len(samples)
    return samples, report


def _apply_overlong(encoded: EncodedChat, max_len: int, policy: str, source: str,
                    report: TokenizeReport) -> EncodedChat | None:
    length = len(encoded.input_ids)
    if policy == "error":
        raise UserError(f"sample has {length} tokens, more than train.max_seq_len={max_len}", where=source,
                        hint="raise train.max_seq_len, or set train.overlong to drop or truncate_prompt")
    if policy == "truncate_prompt":
        cut = truncate_prompt(encoded, max_len)
        if cut is not None:
            report.truncated_prompt += 1
            return cut
        report.add_problem(f"{source}: {length} tokens; the response alone exceeds max_seq_len, dropped")
    else:
        report.add_problem(f"{source}: {length} tokens > max_seq_len {max_len}, dropped")
    report.dropped_overlong += 1
    return None


def _bos_is_turn_marker(tokenizer) -> bool:
    """True when the BOS token also opens each chat turn (ChatML: <|im_start|>)."""
    if tokenizer.bos_token is None:
        return False
    probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]

    return render_text(tokenizer, probe).count(tokenizer.bos_token) > 1


# ---------------------------------------------------------------------------------------------
# Packing and batching


def pack_best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: sample indices per row, each row's total <= capacity.

    Longest first; each goes into the fullest row it still fits (least space left), else a new row.
    Rows come out in creation order; indices inside a row in placement order. O(n * rows), which is
    fine for the tens of thousands of samples a CPU run sees.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    space: list[int] = []
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"sample {i} has {lengths[i]} tokens > capacity {capacity}")
        best = min((r for r in range(len(rows)) if space[r] >= lengths[i]), key=lambda r: space[r],
                   default=None)
        if best is None:
            rows.append([i])
            space.append(capacity - lengths[i])
        else:
            rows[best].append(i)
            space[best] -= lengths[i]
    return rows


def make_rows(samples: list[Sample], max_seq_len: int, packing: bool) -> list[list[Sample]]:
    """Best-fit packed rows of up to ``max_seq_len`` tokens, or one sample per row."""
    if not packing:
        return [[s] for s in samples]
    return [[samples[i] for i in row] for row in pack_best_fit([len(s) for s in samples], max_seq_len)]


def batch_units(samples: list[Sample], batch_tokens: int | None) -> list[list[Sample]]:
    """What an optimizer step draws from: one example per unit, or best-fit rows of ``batch_tokens``."""
    return make_rows(samples, batch_tokens, packing=True) if batch_tokens else make_rows(samples, 0, False)


def examples_per_micro_batch(batch_size: int, batch_tokens: int | None) -> int:
    """Units per micro-batch: ``batch_size`` examples, or one token-budget row."""
    return 1 if batch_tokens else batch_size


def collate_micro_batch(units: list[list[Sample]], pad_id: int, packing: bool) -> dict:
    """A micro-batch as tensors: padding-free (all its examples in one row) or one padded row each."""
    if packing:
        units = [[sample for unit in units for sample in unit]]
    return collate(units, pad_id)


def shifted_targets(labels: list[int]) -> list[int]:
    """What each position should predict: the next label, and nothing at the sample's last token."""
    return labels[1:] + [IGNORE_INDEX]


def collate(rows: list[list[Sample]], pad_id: int) -> dict:
    """Tensors for a micro-batch: ``input_ids``, ``position_ids``, ``targets`` (B x longest row)."""
    import torch

    width = max(sum(len(s) for s in row) for row in rows)
    input_ids, positions, targets = [], [], []
    for row in rows:
        ids, pos, tgt = [], [], []
        for sample in row:
            ids += sample.input_ids
            pos += range(len(sample))
            tgt += shifted_targets(sample.labels)
        pad = width - len(ids)
        input_ids.append(ids + [pad_id] * pad)
        positions.append(pos + list(range(pad)))  # padding is a separate "sample": no attention to it
        targets.append(tgt + [IGNORE_INDEX] * pad)
    return {"input_ids": torch.tensor(input_ids), "position_ids": torch.tensor(positions),
            "targets": torch.tensor(targets)}


def row_tokens(row: list[Sample]) -> int:
    return sum(len(s) for s in row)


def length_histogram(lengths: list[int], bins: int = 10, width: int = 40) -> str:
    """A text histogram of sample lengths for --dry-run."""
    if not lengths:
        return "(no samples)"
    low, high = min(lengths), max(lengths)
    step = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min((n - low) // step, bins - 1)] += 1
    top = max(counts)
    lines = []
    for b, count in enumerate(counts):
        if count == 0 and b * step + low > high:
            break
        bar = "#" * max(1 if count else 0, round(width * count / top))
        lines.append(f"{low + b * step:>6}-{low + (b + 1) * step - 1:<6} {count:>7}  {bar}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# A run's data: what the SFT recipe trains and validates on


@dataclass
class TrainData:
    """A run's training and validation rows, with what tokenising them reported."""

    train_rows: list[list[Sample]]
    validation_rows: list[list[Sample]]
    report: TokenizeReport
    validation_report: TokenizeReport | None
    sample_prompts: list[list[dict]]
    validation_by_task: dict = field(default_factory=dict)  # task -> rows (multi-task only)


def prepare_data(recipe, tokenizer, show_progress: bool = True) -> TrainData:
    """Tokenise, check and pack train (and validation) data. Deterministic, so every rank agrees."""
    t = recipe.train
    if recipe.data.mixture:
        return prepare_mixture_data(recipe, tokenizer, show_progress)
    records = read_chat_jsonl(recipe.data.train)
    samples, report = tokenize_records(tokenizer, records, t.max_seq_len, t.overlong, t.train_on,
                                       show_progress=show_progress)
    if not samples:
        raise UserError(
            f"no sample in {recipe.data.train} has a trainable token ({report.no_trainable_tokens} without "
            f"any, {report.dropped_overlong} longer than max_seq_len)",
            hint="each record needs an assistant turn with content (loss is on assistant tokens; "
                 "train.train_on: all trains on everything)")
    val_rows, val_report, prompts = [], None, []
    if recipe.data.validation:
        val_records = read_chat_jsonl(recipe.data.validation)
        val_samples, val_report = tokenize_records(tokenizer, val_records, t.max_seq_len,
                                                   "drop" if t.overlong == "error" else t.overlong, t.train_on)
        val_rows = batch_units(val_samples, t.batch_tokens)
        prompts = [_prompt_part(m) for _, m in val_records if any(x["role"] == "assistant" for x in m)][:2]
    if t.sample_prompts:
        prompts = [[{"role": "user", "content": p}] for p in t.sample_prompts]
    return TrainData(batch_units(samples, t.batch_tokens), val_rows, report, val_report, prompts)


def _prompt_part(messages: list[dict]) -> list[dict]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def prepare_mixture_data(recipe, tokenizer, show_progress: bool = True) -> TrainData:
    """Multi-task data: tokenise and pack each task, then mix the training rows by the recipe's sampling
    (:mod:`tuneloop.train.mixture`)."""
    t, data = recipe.train, recipe.data
    task_rows, validation_by_task, sizes, report = {}, {}, {}, TokenizeReport()
    for task in data.mixture:
        samples, task_report = tokenize_records(tokenizer, read_chat_jsonl(task.train), t.max_seq_len,
                                                t.overlong, t.train_on, show_progress=show_progress)
        if not samples:
            raise UserError(f"data.mixture[{task.name}]: no sample in {task.train} has a trainable token")
        _merge_reports(report, task_report)
        for sample in samples:
            sample.task = task.name
        task_rows[task.name] = batch_units(samples, t.batch_tokens)
        sizes[task.name] = len(task_rows[task.name])
        if task.validation:
            val, _ = tokenize_records(tokenizer, read_chat_jsonl(task.validation), t.max_seq_len,
                                      "drop" if t.overlong == "error" else t.overlong, t.train_on)
            for sample in val:
                sample.task = task.name
            validation_by_task[task.name] = batch_units(val, t.batch_tokens)
    weights = {task.name: task.weight for task in data.mixture}
    probabilities = task_probabilities(sizes, weights, data.sampling, data.temperature)
    rows = mix_rows(task_rows, probabilities, t.seed)
    validation = [row for name in sorted(validation_by_task) for row in validation_by_task[name]]
    return TrainData(rows, validation, report, None, [], validation_by_task)


def _merge_reports(total, part) -> None:
    for name in ("total", "kept", "dropped_overlong", "truncated_prompt", "no_trainable_tokens"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.lengths.extend(part.lengths)
    total.problems.extend(part.problems[: max(0, 20 - len(total.problems))])
