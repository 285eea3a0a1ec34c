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

__all__ = ["gaussian_rows"]


def gaussian_rows(gen: torch.Generator, rows: int, sizes: Sequence[int], sigma: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """``rows`` times the draws ``gaussian(gen, (size,), sigma, like)`` for each ``size`` of ``sizes`` in turn,
    each row the concatenation of its draws: ``[rows, sum(sizes)]`` in ``dtype``, bit for bit the torch path's
    numbers, ``gen`` left where those draws leave it."""
    out = torch.empty(rows, sum(sizes), dtype=torch.float32)
    slices = []
    o = 0
    for s in sizes:
        slices.append((o, o + s))
        o += s
    if len(slices) == 1:  # one draw per row: the row itself
        for row in out.unbind(0):
            row.normal_(generator=gen)
    else:
        for row in out.unbind(0):
            for a, b in slices:
                row[a:b].normal_(generator=gen)
    if dtype != torch.float32:
        out = out.to(dtype)
    return out * sigma
