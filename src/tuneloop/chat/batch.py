"""Right-padding encoded conversations into tensors: shared by training, preference methods and evaluation."""

from __future__ import annotations

from tuneloop.chat.template import IGNORE_INDEX


def pad_batch(encoded: list, pad_id: int) -> dict:
    """Right-padded ``input_ids``, ``labels`` and ``attention_mask`` for items with ``input_ids``/``labels``.

    The items are :class:`~tuneloop.chat.template.EncodedChat` or anything shaped like it (the
    preference methods' encoded answers). Padding positions carry no label.
    """
    import torch  # lazy: the chat package is reached by `tuneloop --help`

    width = max(len(e.input_ids) for e in encoded)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in encoded]
    labels = [e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in encoded]
    attention = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in encoded]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(attention)}
