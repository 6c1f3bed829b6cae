"""What travels between server and clients: adapter tensors in a Flower ArrayRecord, and its size.

Only trainable adapter tensors (LoRA A/B matrices) are put on the wire, by parameter name, in a fixed
order (Flower's clipping mod checks that a reply's keys come back in the order they were sent).
Sizes are measured on Flower's own serialisation of a message (the objects it pushes), so the bytes
in the report are the bytes a deployment sends, not an estimate from tensor shapes.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def to_array_record(arrays: dict[str, np.ndarray], order: list[str] | None = None) -> ArrayRecord:
    keys = order if order is not None else list(arrays)
    return ArrayRecord({key: Array(np.ascontiguousarray(arrays[key])) for key in keys})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in record.items()}


def wire_objects(message: Message) -> dict[str, bytes]:
    """Every object Flower serialises to send ``message`` (message, records, arrays), by object id."""
    return {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(message).items()}


def message_bytes(message: Message) -> int:
    return sum(len(data) for data in wire_objects(message).values())
