"""Export a ``lif`` network, or a stack of ``lif`` layers, to Lava processes and run it:
``export(net, params, fixed_point=False) -> LavaNetwork``.

The processes (lava-nc 0.10.0), for a single layer and for layer ``l`` of a :class:`models.stack.Stack`::

    RingBuffer(x, pre-shifted) -> Dense(W^0_in, graded) -> RecordingLIF_0 <-> Dense(W^0_rec)
    RecordingLIF_{l-1} -> Dense(W^l_in) -> RecordingLIF_l <-> Dense(W^l_rec)                 (l >= 1)

``RecordingLIF`` (:mod:`hw_targets.lava.procs.recording_lif`, a clean package) is Lava's LIF whose
ProcessModels are the stock floating-point and bit-accurate ones, subclassed only to store v, u and the
spikes of every step (instead of one Monitor process per variable). A single-layer network is the one-layer
case of the same construction.

*Sparse matrices* (a network's ``connectivity``, :mod:`neuro.connectivity`) run as ``Dense`` processes holding
the masked matrix ``W * mask`` (zeros off the mask): the same arithmetic as the torch model, float and bit-exact.
(lava-nc 0.10's ``Sparse`` process stores only the nonzero weights, what Loihi would store; on the Python
simulator it computes the same sums. The check of Loihi's limits, :mod:`hw_targets.lava.constraints`, counts
only the synapses of the mask, as a sparse format stores them.)

*Timing.* Lava's Dense sends at step t what it accumulated at t-1 (the delay that lets a recurrent loop
run). For the recurrent path this is the model's own ``W_rec z_{t-1}``. The input path must carry
``W_in x_t`` at step t, so the RingBuffer is fed the inputs shifted by one step (column t holds
``x_{t+1}``) and the input Dense's accumulator ``a_buff`` starts at ``W_in x_0``, which it sends at the
first step: layer 0's input at every step is exactly ``W^0_in x_t + W^0_rec z^0_{t-1}``, no step lost.

*Latency of a stack.* The torch stack's feed-forward path has no delay (layer l reads layer l-1's spikes of
the same step); in Lava every Dense delivers one step later, so layer l runs ``l`` steps behind layer 0: Lava
step ``s`` of layer l is the torch stack's step ``s - l``. The run therefore lasts ``T + L - 1`` steps (the
input padded with ``L - 1`` zero steps), layer l's recorded v, u and spikes are read from its Lava steps
``l .. l + T - 1`` (its latency removed), and the readout is computed from the aligned spikes. A layer must
stay at rest before its first step: its bias is 0 for its first ``l`` Lava steps and set to ``b^l`` after
them (the run pauses at steps 1 .. L-1 to set it), its input from below is 0 then (layer l-1 is still before its own
first step, at rest), so its state at its step 0 is the torch stack's initial state. After the
shift every layer's spikes, v and current are the torch stack's.

*Skip connections* (``skip=True``: layer l > 0 reads ``[z^{l-1}_t, x_t]``) split its ``W^l_in`` into the part
from the layer below (a Dense from ``RecordingLIF_{l-1}``) and the part from the input (a Dense fed by a
RingBuffer of its own, holding the input delayed by l steps so that ``x_t`` arrives at layer l's step t);
the readout reads every layer's aligned spikes.

*Readout.* ``y_t = kappa_out y_{t-1} + W_out z_t + b_out`` is computed on the host from the recorded
(aligned) spikes by the torch model's own ``readout``, not by a Lava process.

*Batch.* B sequences run as B independent copies of the network in one Lava run (block-diagonal
weights), at most ``max_neurons`` LIF neurons per run; larger batches take several runs.

*Floating point* (``select_tag="floating_pt"``, ``PyLifModelFloat``) runs ``models.lif`` with
``dynamics="lava"``, ``reset="zero"``, ``v_reset=0``, ``refractory=0``: ``du = 1 - beta``,
``dv = 1 - alpha``, ``vth = v_th``, ``bias_mant = b``. Lava computes in float64: the torch model in
float64 gives the same spikes (v to rounding); float32 params are run in float64 and the trace cast back.
*Fixed point* (``select_tag="fixed_pt"``, ``PyLifModelBitAcc``, ``PyDenseModelBitAcc`` with mixed sign mode,
8 weight bits and the weight exponents) runs the integer network of :mod:`models.lif_loihi`, quantized
first by :func:`hw_targets.lava.quantize` when given a float single-layer network (a float stack is not
quantized: build a stack of ``lif-loihi`` layers); its inputs must be integers (spikes).

*Loihi's limits* (fan-in, weight bits, synapse memory per core, cores per chip) are checked at export
(:func:`hw_targets.lava.constraints.check_loihi`; ``limits=None`` skips the check); the mapping found is
``LavaNetwork.mapping``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hw_targets.lava._check import check_finite, check_lava_lif
from hw_targets.lava.constraints import LOIHI, LoihiLimits, check_loihi
from models.lif_loihi import B_RANGE, W_RANGE, LIFLoihi
from models.stack import Stack
from neuro.backends import Trace
from neuro.contract import AbstractNetwork, Params

__all__ = ["LavaNetwork", "export", "loihi_params", "simulate_lava", "simulate_lava_fixed"]


def _check_integer_params(qnet: LIFLoihi, qparams: Params, prefix: str = "") -> None:
    for k, (lo, hi), what in (("W_in", W_RANGE, "even integers"), ("W_rec", W_RANGE, "even integers"),
                              ("b", B_RANGE, "integers (13-bit bias mantissa)")):
        v = qparams[prefix + k].detach().double()
        ok = bool(torch.all(v == torch.round(v)) and torch.all((v >= lo) & (v <= hi)))
        if ok and k != "b":
            ok = bool(torch.all(torch.remainder(v, 2) == 0))
        k = prefix + k
        if not ok:
            raise ValueError(f"params[{k!r}] of {qnet.name!r} must be {what} in [{lo}, {hi}] to run on Loihi "
                             f"(found values in [{float(v.min()):.6g}, {float(v.max()):.6g}]): "
                             "use hw_targets.lava.quantize")


class LavaNetwork:
    """A ``lif`` network or a stack of ``lif`` layers as Lava processes; :meth:`run` builds them, runs ``T``
    steps (``T + L - 1`` for L layers) and returns a Trace aligned to the torch model's steps."""

    def __init__(self, net: AbstractNetwork, params: Params, fixed_point: bool = False, max_neurons: int = 512,
                 mapping=None):
        self.net, self.fixed_point, self.max_neurons, self.mapping = net, fixed_point, max_neurons, mapping
        self.dtype = next(iter(params.values())).dtype
        self.params = {k: v.detach().to("cpu") for k, v in params.items()}
        if isinstance(net, Stack):
            self.layers = net.layers
            layer_params = [net.layer_params(self.params, l) for l in range(len(net.layers))]
        else:
            self.layers = (net,)
            layer_params = [{k: net.weight(self.params, k) if k in ("W_in", "W_rec") else self.params[k]
                             for k in ("W_in", "W_rec", "b")}]
        self._layer_np = [{k: v.double().numpy() for k, v in lp.items()} for lp in layer_params]

    @property
    def latency(self) -> tuple[int, ...]:
        """The Lava steps each layer runs behind the torch model (layer l: l; module docstring)."""
        return tuple(range(len(self.layers)))

    def save(self, path: str | Path) -> Path:
        """Write the network to ``path`` atomically (``.npz``: the model's name and fields as JSON, the parameters)."""
        import dataclasses
        import json

        fields = {f.name: getattr(self.net, f.name) for f in dataclasses.fields(self.net)}
        meta = json.dumps({"model": self.net.name, "fields": fields, "fixed_point": self.fixed_point,
                           "dtype": str(self.dtype).replace("torch.", "")})
        from neuro import io

        # to ``path`` exactly (np.savez would append .npz to a name without it); a failed write keeps the old file
        return io.save_npz(path, meta=np.array(meta), **{k: v.double().numpy() for k, v in self.params.items()})

    @classmethod
    def load(cls, path: str | Path) -> "LavaNetwork":
        """The network :meth:`save` wrote."""
        import json

        import models

        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            dtype = getattr(torch, meta["dtype"])
            params = {k: torch.from_numpy(data[k]).to(dtype) for k in data.files if k != "meta"}
        net = models.make(meta["model"], **meta["fields"])
        net.check_params(params)
        return export(net, params, fixed_point=meta["fixed_point"])

    @property
    def tag(self) -> str:
        return "fixed_pt" if self.fixed_point else "floating_pt"

    def run(self, xs: Tensor) -> Trace:
        """Run on ``xs`` [T, B, n_in] (or [T, n_in]) from rest: spikes, v, y [T, B, ...] (a stack: every
        layer's units side by side, each layer's latency removed); ``extra`` holds the current (``"i"``
        floating point, ``"u"`` fixed point, as the torch models name it)."""
        if xs.dim() == 2:
            xs = xs[:, None, :]
        if xs.dim() != 3 or xs.shape[-1] != self.net.n_in:
            raise ValueError(f"xs has shape {tuple(xs.shape)}: expected [T, B, n_in={self.net.n_in}]")
        x = xs.detach().to("cpu", torch.float64).numpy()
        if self.fixed_point and not np.array_equal(x, np.round(x)):
            raise ValueError("fixed-point Lava takes integer inputs (spikes or graded spikes): xs has non-integer "
                             "values; binarise or scale the inputs first")
        T, B, n = x.shape[0], x.shape[1], self.net.n_hidden
        if T == 0:  # no step to run (Lava cannot run 0 steps): an empty trace of the same shapes
            spikes = v = u = torch.zeros(0, B, n, dtype=self.dtype)
        else:
            group = max(1, min(B, self.max_neurons // n))
            parts = [self._run_group(x[:, g:g + group]) for g in range(0, B, group)]
            spikes, v, u = (torch.from_numpy(np.concatenate([part[i] for part in parts], axis=1)).to(self.dtype)
                            for i in range(3))
        # the readout, on the host: the torch model's own expression, on the aligned spikes
        state = self.net.init_state(self.params, B)
        ys = []
        for z in spikes:
            state, y = self.net.readout(self.params, state, z)
            ys.append(y)
        y = torch.stack(ys) if ys else torch.zeros(0, B, self.net.n_out, dtype=self.dtype)
        return Trace(y=y, spikes=spikes, v=v, extra={"u" if self.fixed_point else "i": u})

    def _run_group(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run ``x`` [T, G, n_in] as G copies; returns spikes, v, u each [T, G, n_hidden] (latencies removed)."""
        import hw_targets.lava as hl

        hl.ensure_lava()
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.dense.process import Dense
        from lava.proc.io.source import RingBuffer
        from lava.utils.weightutils import SignMode

        from hw_targets.lava.procs.recording_lif import RecordingLIF

        T, G, n_in = x.shape
        L = len(self.layers)
        steps = T + L - 1  # layer l runs l steps behind layer 0
        eye = np.eye(G)
        data = np.zeros((G * n_in, steps))
        data[:, :T - 1] = x[1:].reshape(T - 1, G * n_in).T  # column t is sent at step t+1, arrives at t+2
        x0 = x[0].reshape(G * n_in)
        fixed = self.fixed_point

        def shift(s: np.ndarray, e: int) -> np.ndarray:
            return np.left_shift(s, e) if e > 0 else np.right_shift(s, -e)

        def dense(W: np.ndarray, e: int, **kw):
            if fixed:
                return Dense(weights=W.astype(np.int64), weight_exp=e, num_weight_bits=8, sign_mode=SignMode.MIXED,
                             **kw)
            return Dense(weights=W, **kw)

        src = RingBuffer(data=data.astype(np.int64) if fixed else data)
        lifs, biases, below = [], [], src.s_out
        for l, (net, p) in enumerate(zip(self.layers, self._layer_np)):
            W_in, W_rec = np.kron(eye, p["W_in"]), np.kron(eye, p["W_rec"])
            e_in, e_rec = (net.weight_exp_in, net.weight_exp_rec) if fixed else (0, 0)
            if l > 0 and self.net.skip:  # [z^{l-1}, x]: the input's columns from a ring buffer l steps late
                n_below = self.layers[l - 1].n_hidden
                W_x = np.kron(eye, p["W_in"][:, n_below:])
                W_in = np.kron(eye, p["W_in"][:, :n_below])
                late = np.zeros((G * n_in, steps))  # column c is sent at step c, arrives at c + 1 = t + l
                late[:, l - 1:l - 1 + T] = x.reshape(T, G * n_in).T
                ring = RingBuffer(data=late.astype(np.int64) if fixed else late)
                dx = dense(W_x, e_in, num_message_bits=24)
                ring.s_out.connect(dx.s_in)
            din = dense(W_in, e_in, num_message_bits=24) if l == 0 else dense(W_in, e_in)
            if l == 0:  # the first input step, delivered at step 0 (the ring buffer's is one step late)
                din.a_buff.init = shift(W_in.astype(np.int64) @ x0.astype(np.int64), e_in) if fixed else W_in @ x0
            drec = dense(W_rec, e_rec)
            bias = np.tile(p["b"], G).astype(np.int64) if fixed else np.tile(p["b"], G)
            rest = np.zeros_like(bias)  # layer l > 0 rests (no bias) until its first step, l steps in
            if fixed:
                lif = RecordingLIF(num_steps=steps, shape=(G * net.n_hidden,), du=net.du, dv=net.dv, vth=net.vth,
                                   bias_mant=bias if l == 0 else rest,
                                   bias_exp=np.full(G * net.n_hidden, net.bias_exp))
            else:
                lif = RecordingLIF(num_steps=steps, shape=(G * net.n_hidden,), du=1.0 - net.beta,
                                   dv=1.0 - net.alpha, vth=float(net.v_th), bias_mant=bias if l == 0 else rest)
            below.connect(din.s_in)
            din.a_out.connect(lif.a_in)
            lif.s_out.connect(drec.s_in)
            drec.a_out.connect(lif.a_in)
            if l > 0 and self.net.skip:
                dx.a_out.connect(lif.a_in)
            lifs.append(lif)
            biases.append(bias)
            below = lif.s_out
        cfg = Loihi2SimCfg(select_tag=self.tag)
        try:
            done = 0
            for l in range(1, L):  # pause before layer l's first step to give it its bias
                lifs[0].run(condition=RunSteps(num_steps=l - done), run_cfg=cfg)
                lifs[l].bias_mant.set(biases[l])
                done = l
            lifs[0].run(condition=RunSteps(num_steps=steps - done), run_cfg=cfg)
            out = {k: np.concatenate(
                [np.asarray(getattr(lif, f"rec_{k}").get(), dtype=np.float64)[l:l + T].reshape(T, G, -1)
                 for l, lif in enumerate(lifs)], axis=2) for k in ("s", "v", "u")}
        finally:
            lifs[0].stop()
        return out["s"], out["v"], out["u"]


def loihi_params(params: Params, prefixes: tuple[str, ...] = ("",)) -> Params:
    """The integers a ``lif-loihi`` network computes with, for parameters that may hold other values (trained
    ones): the Dense weights ``dense_weights(W)`` (even, in [-256, 254]) and the bias mantissa ``round(b)``,
    as :mod:`models.lif_loihi` takes them; the same network, step for step, in the params' dtype. A stack
    of ``lif-loihi`` layers: ``prefixes`` ``("0.", "1.", ...)``, its layers' keys."""
    from models.lif_loihi import dense_weights

    dtype = next(iter(params.values())).dtype
    out = dict(params)
    for pre in prefixes:
        for k in ("W_in", "W_rec"):
            out[pre + k] = dense_weights(params[pre + k]).to(device=params[pre + k].device, dtype=dtype)
        out[pre + "b"] = torch.round(params[pre + "b"].detach())
    return out


def export(net: AbstractNetwork, params: Params, fixed_point: bool = False, limits: LoihiLimits | None = LOIHI,
           neurons_per_core: int | None = None, **quantize_kw) -> LavaNetwork:
    """``net`` as Lava processes: a ``lif`` network (``dynamics="lava"``, ``reset="zero"``, ``v_reset=0``, no
    refractory period) in floating point, or quantized first with ``fixed_point=True`` (``quantize_kw`` go to
    :func:`hw_targets.lava.quantize`); a ``lif-loihi`` network is Loihi's integer model already and runs in
    fixed point as it is (``fixed_point`` changes nothing for it; quantization options are refused), with the
    integers it computes with (:func:`loihi_params`; a bias beyond 13 bits is refused). A
    :class:`models.stack.Stack` of such layers (with or without skip connections) exports the same way, one LIF
    process per
    layer (a stack of float ``lif`` layers is quantized layer by layer). The network must fit ``limits``
    (Loihi's, :mod:`hw_targets.lava.constraints`, at ``neurons_per_core`` or the most that fit; ``None``: not
    checked)."""
    net.check_params(params)
    check_finite(params, "Lava")
    stack = isinstance(net, Stack)
    layer = net.layers[0] if stack else net
    if stack and net.layer not in ("lif", "lif-loihi"):
        raise ValueError(f"a stack of {net.layer!r} layers cannot be exported to Lava: only stacks of 'lif' (Lava's "
                         "LIF process) or 'lif-loihi' layers can")

    def checked(n: AbstractNetwork, p: Params) -> object:
        return None if limits is None else check_loihi(n, p, limits, neurons_per_core)

    if isinstance(layer, LIFLoihi):
        if quantize_kw:
            raise ValueError(f"{', '.join(quantize_kw)}: a 'lif-loihi' network is already quantized")
        prefixes = tuple(f"{l}." for l in range(len(net.sizes))) if stack else ("",)
        params = loihi_params(params, prefixes)
        for pre in prefixes:
            _check_integer_params(layer, params, pre)
        return LavaNetwork(net, params, fixed_point=True, mapping=checked(net, params))
    check_lava_lif(layer)
    if fixed_point:
        from hw_targets.lava.quantization import quantize

        qnet, qparams = quantize(net, params, **quantize_kw)
        return LavaNetwork(qnet, qparams, fixed_point=True, mapping=checked(qnet, qparams))
    if quantize_kw:
        raise ValueError(f"{', '.join(quantize_kw)}: quantization options need fixed_point=True")
    return LavaNetwork(net, params, fixed_point=False, mapping=checked(net, params))


def simulate_lava(net: AbstractNetwork, params: Params, xs: Tensor) -> Trace:
    """``neuro.simulate(..., backend="lava")``: Lava's floating-point LIF (a ``lif-loihi`` network is refused:
    it is Loihi's integer model, which ``backend="lava-fixed"`` runs)."""
    if isinstance(net.layers[0] if isinstance(net, Stack) else net, LIFLoihi):
        raise ValueError("model 'lif-loihi' is Loihi's integer model: backend='lava-fixed' runs it, "
                         "backend='lava' runs Lava's floating-point LIF")
    return export(net, params).run(xs)


def simulate_lava_fixed(net: AbstractNetwork, params: Params, xs: Tensor, **quantize_kw) -> Trace:
    """``neuro.simulate(..., backend="lava-fixed")``: Lava's bit-accurate LIF on the quantized network
    (a float ``lif`` network is quantized with ``quantize_kw``; a ``lif-loihi`` network runs as it is)."""
    return export(net, params, fixed_point=True, **quantize_kw).run(xs)
