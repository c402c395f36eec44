"""A KV cache for the runner's decode loop that appends in place instead of re-copying.

transformers' ``DynamicLayer.update`` appends a step's keys and values with ``torch.cat``, which
copies the whole cache of that layer at every decoding step: O(width) memory traffic per step, as
much as the attention itself reads. :class:`GrowingLayer` keeps each layer's keys and values in a
buffer with spare columns (capacity doubles when full, so each column is copied O(1) times on
average) and writes a step's block into the next free columns; attention reads views of the
filled part. The values attention sees are the same; only where they live changes.

:func:`growing_cache` builds a ``DynamicCache`` for a model and swaps every plain
``DynamicLayer`` for a :class:`GrowingLayer`. Other layer kinds (sliding windows, linear
attention, quantised layers) are left as transformers made them.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["GrowingLayer", "growing_cache"]

# Columns allocated at the first update beyond the block itself (then capacity doubles).
_FIRST_SPARE = 256


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a buffer ``(batch, heads, capacity, head_dim)``.

    ``self.keys`` / ``self.values`` are always views of the filled columns ``[:length]``, so code
    that reads them (transformers' own helpers included) sees what a ``DynamicLayer`` would hold.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._n = 0

    def _expose(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._k is not None and self._v is not None
        keys, values = self._k[:, :, : self._n], self._v[:, :, : self._n]
        self.keys, self.values = keys, values
        return keys, values

    def _reserve(self, need: int) -> None:
        """Make room for ``need`` columns in total, keeping the filled ones."""
        assert self._k is not None and self._v is not None
        cap = self._k.shape[2]
        if need <= cap:
            return
        new_cap = max(2 * cap, need)
        shape = (*self._k.shape[:2], new_cap, self._k.shape[3])
        k = self._k.new_empty(shape)
        v = self._v.new_empty(shape)
        k[:, :, : self._n] = self._k[:, :, : self._n]
        v[:, :, : self._n] = self._v[:, :, : self._n]
        self._k, self._v = k, v

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``key_states`` / ``value_states`` ``(batch, heads, block, head_dim)``; return
        the layer's keys and values so far (views, ``(batch, heads, length, head_dim)``)."""
        t = key_states.shape[2]
        if self._k is None or self._v is None:
            self.lazy_initialization(key_states, value_states)
            shape = (*key_states.shape[:2], t + _FIRST_SPARE, key_states.shape[3])
            self._k = key_states.new_empty(shape)
            self._v = value_states.new_empty(shape)
        else:
            self._reserve(self._n + t)
        self._k[:, :, self._n : self._n + t] = key_states
        self._v[:, :, self._n : self._n + t] = value_states
        self._n += t
        return self._expose()

    def get_seq_length(self) -> int:
        return self._n

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (copies only the filled columns)."""
        if self._k is None or self._v is None or self._n == 0:
            return
        idx = indices.to(self._k.device)
        k = self._k.new_empty((len(idx), *self._k.shape[1:]))
        v = self._v.new_empty((len(idx), *self._v.shape[1:]))
        k[:, :, : self._n] = self._k[idx, :, : self._n]
        v[:, :, : self._n] = self._v[idx, :, : self._n]
        self._k, self._v = k, v
        self._expose()

    def _rebuild(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._k, self._v, self._n = keys.contiguous(), values.contiguous(), keys.shape[2]
        self._expose()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens, got {tokens_to_remove}")
        if tokens_to_remove == 0 or self._k is None:
            return
        self._n = max(0, self._n + tokens_to_remove)
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._n > 0 and self._k is not None and self._v is not None:
            n = self._n
            self._rebuild(
                self._k[:, :, :n].repeat_interleave(repeats, dim=0),
                self._v[:, :, :n].repeat_interleave(repeats, dim=0),
            )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self._n > 0:
            self.batch_select_indices(beam_idx)

    def reset(self) -> None:
        self._k = self._v = None
        self._n = 0
        super().reset()


def growing_cache(config: Any) -> DynamicCache:
    """A ``DynamicCache`` for a model with this config whose plain layers append in place."""
    cache = DynamicCache(config=config)
    cache.layers = [
        GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache
