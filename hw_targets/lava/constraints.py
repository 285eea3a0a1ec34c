"""What a network needs of a Loihi chip, checked before export: fan-in, weight bits, synapse memory per core, cores.

A Lava LIF process of ``n`` neurons is placed on ``ceil(n / k)`` neuro-cores of ``k`` neurons each (the layer's
units in order); every synapse into a neuron is stored on that neuron's core. The limits of one core and chip
are those of Loihi (Davies et al. 2018, "Loihi: A Neuromorphic Manycore Processor with On-Chip Learning",
IEEE Micro 38(1):82-99: 128 neuro-cores per chip, 1024 compartments and 128 KiB of synaptic memory per core)
as NengoLoihi's build checks them (nengo/nengo-loihi, ``nengo_loihi/block.py``: ``MAX_COMPARTMENTS = 1024``,
``MAX_IN_AXONS = 4096``, ``MAX_SYNAPSE_BITS = 1048576``; the weight-memory cost in
``SynapseConfig.bits_per_axon``)::

    neurons per core       <= 1024
    fan-in                 <= 4096     distinct presynaptic sources (input axons) per core; so per neuron too
    synapse memory         <= 2^20 bits per core
    weight                 8 bits      (fixed point: the 8-bit mantissa of Lava's Dense, ``W = 2 m``)
    cores                  <= 128      per chip

*Synapse memory.* Each presynaptic source (axon) reaching a core stores its ``n`` synapses into that core in
blocks of up to 64, each block ``n_b (w + i) + 10`` bits rounded up to a 64-bit word (NengoLoihi's
``bits_per_axon`` with ``n_synapses = 63``, 4 + 6 header bits), ``w = 8`` weight bits and ``i`` index bits:
``i = 0`` for a dense matrix (every neuron of the core, in order), ``i = max(6, ceil(log2 k))`` for a sparse one
(the index of the target neuron, NengoLoihi's index widths 6..12). A sparse mask counts only the synapses it
keeps: it is what makes a network fit that does not fit dense (a ``connectivity``, :mod:`neuro.connectivity`).

*Neurons per core.* Given, it is checked; not given (``None``), the largest ``k <= 1024`` whose synapses fit
every core is taken, as a compiler splits a population over more cores; the network then fails only if one
neuron's synapses exceed a core, or it needs more cores than a chip has.

*Not checked.* Output axons per core (4096 in NengoLoihi), the limits of Loihi 2 (Intel gives its chip totals,
1M neurons and 120M synapses over 128 cores, not the per-core figures this check needs), multi-chip systems,
and the Lava process of the host (the input RingBuffer and the readout run off-chip here).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["LOIHI", "LoihiLimits", "LoihiMapping", "check_loihi", "loihi_mapping"]


@dataclasses.dataclass(frozen=True)
class LoihiLimits:
    """One chip's limits (module docstring); :data:`LOIHI` is Loihi's."""

    name: str = "Loihi"
    neurons_per_core: int = 1024
    input_axons_per_core: int = 4096
    synapse_bits_per_core: int = 2 ** 20
    weight_bits: int = 8
    cores_per_chip: int = 128


LOIHI = LoihiLimits()

_BLOCK = 64  # synapses per block of one axon's weights (NengoLoihi's n_synapses = 63, plus one)
_HEADER = 10  # bits per block: 4 (synapse index) + 6 (number of synapses)
_WORD = 64


@dataclasses.dataclass(frozen=True)
class LoihiMapping:
    """Where each layer goes: ``neurons_per_core``, ``cores`` and the largest ``fan_in`` (per neuron),
    ``in_axons`` and ``synapse_bits`` (per core) of each layer, and the total ``cores``."""

    neurons_per_core: tuple[int, ...]
    cores_per_layer: tuple[int, ...]
    fan_in: tuple[int, ...]
    in_axons: tuple[int, ...]
    synapse_bits: tuple[int, ...]
    limits: LoihiLimits

    @property
    def cores(self) -> int:
        return sum(self.cores_per_layer)


def _index_bits(k: int) -> int:
    return max(6, math.ceil(math.log2(max(k, 2))))


def _core_bits(conn: list[tuple[np.ndarray, bool]], rows: slice, w: int, k: int) -> tuple[int, int]:
    """(synapse bits, input axons) of one core holding the neurons ``rows``: ``conn`` is each incoming matrix's
    existence mask [post, pre] and whether it is sparse."""
    bits = axons = 0
    for m, sparse in conn:
        per_axon = m[rows].sum(0)  # synapses from each presynaptic source into this core
        per_axon = per_axon[per_axon > 0]
        axons += int(per_axon.size)
        bpw = w + (_index_bits(k) if sparse else 0)
        full, rest = np.divmod(per_axon, _BLOCK)
        block = -(-(_BLOCK * bpw + _HEADER) // _WORD) * _WORD
        last = np.where(rest > 0, -(-(rest * bpw + _HEADER) // _WORD) * _WORD, 0)
        bits += int((full * block + last).sum())
    return bits, axons


def _layers(net) -> list[tuple[str, int, list[tuple[str, np.ndarray, bool]]]]:
    """Each layer's (name, size, incoming matrices (key, existence mask, sparse))."""
    from models.stack import Stack

    if isinstance(net, Stack):
        nets = [(f"layer {l}", f"{l}.", layer) for l, layer in enumerate(net.layers)]
    else:
        nets = [("the network", "", net)]
    out = []
    for what, prefix, layer in nets:
        shapes, conn = layer.param_shapes(), []
        for k in ("W_in", "W_rec"):
            m = net.masks.get(prefix + k)
            conn.append((prefix + k, np.ones(shapes[k], bool) if m is None else m.cpu().numpy().astype(bool), m is not None))
        out.append((what, layer.n_hidden, conn))
    return out


def loihi_mapping(net, limits: LoihiLimits = LOIHI, neurons_per_core: int | None = None) -> LoihiMapping:
    """Place ``net`` (a single-layer network or a :class:`models.stack.Stack`) on Loihi cores, or raise a
    one-line ``ValueError`` naming the limit it breaks and its value (module docstring)."""
    if neurons_per_core is not None and (isinstance(neurons_per_core, bool) or not isinstance(neurons_per_core, int)
                                         or not 1 <= neurons_per_core <= limits.neurons_per_core):
        raise ValueError(f"neurons_per_core={neurons_per_core!r} is invalid: expected an integer in "
                         f"[1, {limits.neurons_per_core}] ({limits.name}'s neurons per core) or None")
    w, L = limits.weight_bits, limits
    ks, cores, fans, axons, bits = [], [], [], [], []
    for what, n, conn in _layers(net):
        fan = sum(m.sum(1) for _, m, _ in conn)
        j = int(np.argmax(fan))
        if fan[j] > L.input_axons_per_core:
            parts = " + ".join(f"{int(m[j].sum())} ({k})" for k, m, _ in conn)
            raise ValueError(f"{what}: neuron {j} has fan-in {int(fan[j])} = {parts}, beyond {L.name}'s "
                             f"{L.input_axons_per_core} input axons per core: make its input sparser "
                             f"(connectivity, e.g. 'fan-in:K' with K <= {L.input_axons_per_core})")
        masks = [(m, sparse) for _, m, sparse in conn]

        def worst(k: int) -> tuple[int, int]:
            got = [_core_bits(masks, slice(a, min(a + k, n)), w, k) for a in range(0, n, k)]
            return max(b for b, _ in got), max(a for _, a in got)

        candidates = [neurons_per_core] if neurons_per_core is not None else \
            sorted({min(n, 2 ** e) for e in range(int(math.log2(L.neurons_per_core)) + 1)} | {min(n, L.neurons_per_core)},
                   reverse=True)
        chosen = None
        for k in candidates:
            b, a = worst(k)
            if b <= L.synapse_bits_per_core and a <= L.input_axons_per_core:
                chosen = (k, b, a)
                break
        if chosen is None:
            k = candidates[-1]
            b, a = worst(k)
            if a > L.input_axons_per_core:
                raise ValueError(f"{what}: a core of {k} neurons receives {a} input axons (distinct presynaptic "
                                 f"sources), beyond {L.name}'s {L.input_axons_per_core}: use fewer neurons per core "
                                 "or a sparser mask (connectivity)")
            dense = sum(m[:min(k, n)].sum() for m, _ in masks)
            hint = f", or a mask keeping <= {L.synapse_bits_per_core / b:.2g} of the synapses" if dense else ""
            raise ValueError(f"{what}: synapses per core at {k} neurons per core need {b} bits of synapse memory, "
                             f"beyond {L.name}'s {L.synapse_bits_per_core} bits per core"
                             + (": use fewer neurons per core" if neurons_per_core is not None and k > 1 else "")
                             + hint + " (connectivity)")
        k, b, a = chosen
        ks.append(k)
        cores.append(-(-n // k))
        fans.append(int(fan[j]))
        axons.append(a)
        bits.append(b)
    total = sum(cores)
    if total > L.cores_per_chip:
        raise ValueError(f"the network needs {total} cores ({', '.join(map(str, cores))} per layer at "
                         f"{', '.join(map(str, ks))} neurons per core), beyond {L.name}'s {L.cores_per_chip} cores "
                         "per chip: use a sparser mask (connectivity) or fewer neurons")
    return LoihiMapping(tuple(ks), tuple(cores), tuple(fans), tuple(axons), tuple(bits), limits)


def check_weight_bits(name: str, W, limits: LoihiLimits = LOIHI) -> None:
    """Raise ``ValueError`` unless the Dense weights ``W`` (even integers, ``W = 2 m``) have mantissas ``m`` of
    ``limits.weight_bits`` signed bits."""
    w = np.asarray(W, dtype=np.float64)
    lo, hi = -(2 ** (limits.weight_bits - 1)), 2 ** (limits.weight_bits - 1) - 1
    if w.size and (np.any(w != np.round(w)) or np.any(np.remainder(w, 2) != 0)):
        raise ValueError(f"weight bits: params[{name!r}] must be even integers (the Dense weight is twice an "
                         f"{limits.weight_bits}-bit mantissa); use hw_targets.lava.quantize")
    m = w / 2
    if w.size and (m.min() < lo or m.max() > hi):
        need = int(np.ceil(np.log2(max(-m.min(), m.max() + 1)))) + 1
        raise ValueError(f"weight bits: params[{name!r}] needs {need}-bit mantissas (values in [{w.min():.0f}, "
                         f"{w.max():.0f}]), beyond {limits.name}'s {limits.weight_bits} bits (Dense weights in "
                         f"[{2 * lo}, {2 * hi}]): quantize with a larger weight exponent")


def check_loihi(net, params=None, limits: LoihiLimits = LOIHI, neurons_per_core: int | None = None) -> LoihiMapping:
    """:func:`loihi_mapping`, and for a fixed-point network (``lif-loihi``, or a stack of it) with ``params`` the
    weight bits of every Dense matrix (:func:`check_weight_bits`)."""
    from models.lif_loihi import LIFLoihi
    from models.stack import Stack

    layers = net.layers if isinstance(net, Stack) else (net,)
    if params is not None and isinstance(layers[0], LIFLoihi):
        prefixes = [f"{l}." for l in range(len(layers))] if isinstance(net, Stack) else [""]
        for p in prefixes:
            for k in ("W_in", "W_rec"):
                check_weight_bits(p + k, net.weight(params, p + k).detach().cpu().double().numpy(), limits)
    return loihi_mapping(net, limits, neurons_per_core)
