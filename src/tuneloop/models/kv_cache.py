"""A pre-allocated KV cache for the decoding loop: one buffer per layer, written in place.

transformers' ``DynamicCache`` concatenates every layer's keys and values with the new token at
every step, i.e. copies the whole cache once per token. :class:`PreallocatedLayer` keeps a buffer
``[rows, kv_heads, capacity, head_dim]`` and writes the new column into it; ``keys``/``values`` are
views of the used part, so attention still only reads the columns in use (transformers'
``StaticCache`` would have every step attend over the whole buffer, which on a CPU costs more than
the copy it saves). The buffer doubles when full (rare: a few times per sequence at most).

Rows and columns are managed by the running batch (:mod:`tuneloop.models.decoding`): rows leave
(:func:`keep_rows`), newcomers are stacked under the running rows, left-padded to the same width
(:func:`stack_rows`), and columns that are padding in every row are dropped (:func:`drop_columns`).
Models whose cache is not plain full attention (sliding windows, linear attention) keep
transformers' own cache, and then the batch does not take joiners.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values live in a buffer with room to grow (see the module doc)."""

    def __init__(self, capacity: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.capacity = capacity
        self.width = 0
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.buffers = (_empty_like(key_states, self.capacity), _empty_like(value_states, self.capacity))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self.width + new > self.buffers[0].shape[2]:
            self._grow(2 * (self.width + new))
        for buffer, states in zip(self.buffers, (key_states, value_states)):
            buffer[: states.shape[0], :, self.width : self.width + new] = states
        self.width += new
        self._refresh_views(key_states.shape[0])
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.width

    def _refresh_views(self, rows: int) -> None:
        self.keys = self.buffers[0][:rows, :, : self.width]
        self.values = self.buffers[1][:rows, :, : self.width]

    def _grow(self, capacity: int, rows: int | None = None) -> None:
        rows = rows if rows is not None else self.buffers[0].shape[0]
        grown = tuple(_empty_like(b[:1].expand(rows, -1, -1, -1), capacity) for b in self.buffers)
        used = min(rows, self.keys.shape[0]) if self.keys is not None and self.keys.dim() == 4 else 0
        for old, new in zip(self.buffers, grown):
            new[:used, :, : self.width] = old[:used, :, : self.width]
        self.buffers = grown

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self.is_initialized:
            return
        kept = [v.index_select(0, indices) for v in (self.keys, self.values)]  # copies: rows may move up
        for buffer, rows in zip(self.buffers, kept):
            buffer[: rows.shape[0], :, : self.width] = rows
        self._refresh_views(len(indices))

    def drop_leading(self, columns: int) -> None:
        """Forget the first ``columns`` columns (padding in every row), moving the rest to the front."""
        rows = self.keys.shape[0]
        for buffer in self.buffers:
            buffer[:rows, :, : self.width - columns] = buffer[:rows, :, columns : self.width].clone()
        self.width -= columns
        self._refresh_views(rows)

    def append_rows(self, other: DynamicLayer) -> None:
        """Stack ``other``'s rows under these, left-padding whichever is narrower with zeros."""
        rows, new_rows = self.keys.shape[0], other.keys.shape[0]
        width = max(self.width, other.keys.shape[2])
        if width > self.width:  # shift the running rows right to make room on the left
            if width > self.buffers[0].shape[2] or rows + new_rows > self.buffers[0].shape[0]:
                self._grow(max(2 * width, self.buffers[0].shape[2]), rows + new_rows)
            shift = width - self.width
            for buffer in self.buffers:
                buffer[:rows, :, shift:width] = buffer[:rows, :, : self.width].clone()
                buffer[:rows, :, :shift] = 0
            self.width = width
        elif rows + new_rows > self.buffers[0].shape[0]:
            self._grow(self.buffers[0].shape[2], rows + new_rows)
        pad = width - other.keys.shape[2]
        for buffer, states in zip(self.buffers, (other.keys, other.values)):
            buffer[rows : rows + new_rows, :, :pad] = 0
            buffer[rows : rows + new_rows, :, pad:width] = states
        self._refresh_views(rows + new_rows)


def _empty_like(states: torch.Tensor, capacity: int) -> torch.Tensor:
    rows, heads, _, dim = states.shape
    return torch.zeros(rows, heads, capacity, dim, dtype=states.dtype, device=states.device)


def new_cache(model, capacity: int) -> DynamicCache:
    """A cache for ``model``: pre-allocated layers where every layer is plain attention."""
    cache = DynamicCache(config=model.config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


def is_stackable(cache) -> bool:
    return all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)


def keep_rows(cache, index: torch.Tensor) -> None:
    cache.batch_select_indices(index)


def drop_columns(cache, columns: int) -> None:
    for layer in cache.layers:
        layer.drop_leading(columns)


def stack_rows(cache, new_cache) -> None:
    for layer, new in zip(cache.layers, new_cache.layers):
        layer.append_rows(new)
