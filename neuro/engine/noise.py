"""The random numbers a compiled engine reads, drawn in Python from the rule's own generator, as the torch path
draws them, before the range runs.

The rules draw Gaussian noise with :func:`neuro.rules._common.gaussian`: ``torch.randn(shape)`` in float32 from
a CPU ``torch.Generator``, cast to the parameters' dtype, times ``sigma``. Torch's CPU normal sampler fills a
tensor of 16 or more elements in blocks of 16 (Box-Muller on uniforms drawn for the whole tensor, the last
block redrawn when the size is not a multiple of 16) and a smaller one element by element, so one draw of
``steps * size`` numbers is not ``steps`` draws of ``size``: :func:`gaussian_rows` makes every draw of the
torch path, in its order and size, into a contiguous slice of one buffer (the same sampler on the same number
of contiguous elements gives the same numbers), and casts and scales the buffer at once (elementwise, the same
operations).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["GaussianRows", "gaussian_rows"]


class GaussianRows:
    """:func:`gaussian_rows` into a buffer kept between calls (an engine's, one per rule state's draws): the
    float32 buffer and the views that each draw fills are made once for a width and grown for more rows, so a
    range's draws cost one ``normal_`` call per draw and nothing else per step. The tensor returned is a view
    of the buffer (float32) or a new one (other dtypes), valid until the next call."""

    def __init__(self) -> None:
        self.buf = torch.empty(0, 0)
        self.spans: tuple[int, ...] = ()
        self.views: list[torch.Tensor] = []  # per row, its draws in order

    def __call__(self, gen: torch.Generator, rows: int, sizes: Sequence[int], sigma: float,
                 dtype: torch.dtype) -> torch.Tensor:
        spans = tuple(sizes)
        if spans != self.spans or rows > self.buf.shape[0]:
            self.buf = torch.empty(max(rows, self.buf.shape[0] if spans == self.spans else 0), sum(spans))
            self.spans, self.views = spans, []
            for row in self.buf.unbind(0):
                o = 0
                for s in spans:
                    self.views.append(row[o:o + s] if len(spans) > 1 else row)
                    o += s
        for v in self.views[:rows * len(spans)]:
            v.normal_(generator=gen)
        out = self.buf[:rows]
        if dtype != torch.float32:
            return out.to(dtype).mul_(sigma)
        return out.mul_(sigma)


def gaussian_rows(gen: torch.Generator, rows: int, sizes: Sequence[int], sigma: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """``rows`` times the draws ``gaussian(gen, (size,), sigma, like)`` for each ``size`` of ``sizes`` in turn,
    each row the concatenation of its draws: ``[rows, sum(sizes)]`` in ``dtype``, bit for bit the torch path's
    numbers, ``gen`` left where those draws leave it."""
    return GaussianRows()(gen, rows, sizes, sigma, dtype)
