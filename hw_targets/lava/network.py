"""Export a ``lif`` network to Lava processes and run it: ``export(net, params, fixed_point=False) -> LavaNetwork``.

The processes (lava-nc 0.10.0)::

    RingBuffer(x, pre-shifted) -> Dense(W_in, graded) -> RecordingLIF <-> Dense(W_rec)

``RecordingLIF`` (:mod:`hw_targets.lava.procs.recording_lif`, a clean package) is Lava's LIF whose
ProcessModels are the stock floating-point and bit-accurate ones, subclassed only to store v, u and the
spikes of every step (instead of one Monitor process per variable).

*Timing.* Lava's Dense sends at step t what it accumulated at t-1 (the delay that lets a recurrent loop
run). For the recurrent path this is the model's own ``W_rec z_{t-1}``. The input path must carry
``W_in x_t`` at step t, so the RingBuffer is fed the inputs shifted by one step (column t holds
``x_{t+1}``) and the input Dense's accumulator ``a_buff`` starts at ``W_in x_0``, which it sends at the
first step: the LIF's input at every step is exactly ``W_in x_t + W_rec z_{t-1}``, no step lost.

*Readout.* ``y_t = kappa_out y_{t-1} + W_out z_t + b_out`` is computed on the host from the recorded
spikes (in torch, the same expression as the torch model), not by a Lava process.

*Batch.* B sequences run as B independent copies of the network in one Lava run (block-diagonal
weights), at most ``max_neurons`` LIF neurons per run; larger batches take several runs.

*Floating point* (``select_tag="floating_pt"``, ``PyLifModelFloat``) runs ``models.lif`` with
``dynamics="lava"``, ``reset="zero"``, ``v_reset=0``, ``refractory=0``: ``du = 1 - beta``,
``dv = 1 - alpha``, ``vth = v_th``, ``bias_mant = b``. Lava computes in float64: the torch model in
float64 gives the same spikes (v to rounding); float32 params are run in float64 and the trace cast back. *Fixed point* (``select_tag="fixed_pt"``,
``PyLifModelBitAcc``, ``PyDenseModelBitAcc`` with mixed sign mode, 8 weight bits and the weight
exponents) runs the integer network of :mod:`models.lif_loihi`, quantized first by
:func:`hw_targets.lava.quantize` when given a float network; its inputs must be integers (spikes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hw_targets.lava._check import check_finite, check_lava_lif
from models.lif_loihi import B_RANGE, W_RANGE, LIFLoihi
from neuro.backends import Trace
from neuro.contract import AbstractNetwork, Params

__all__ = ["LavaNetwork", "export", "loihi_params", "simulate_lava", "simulate_lava_fixed"]


def _check_integer_params(qnet: LIFLoihi, qparams: Params) -> None:
    for k, (lo, hi), what in (("W_in", W_RANGE, "even integers"), ("W_rec", W_RANGE, "even integers"),
                              ("b", B_RANGE, "integers (13-bit bias mantissa)")):
        v = qparams[k].detach().double()
        ok = bool(torch.all(v == torch.round(v)) and torch.all((v >= lo) & (v <= hi)))
        if ok and k != "b":
            ok = bool(torch.all(torch.remainder(v, 2) == 0))
        if not ok:
            raise ValueError(f"params[{k!r}] of {qnet.name!r} must be {what} in [{lo}, {hi}] to run on Loihi "
                             f"(found values in [{float(v.min()):.6g}, {float(v.max()):.6g}]): "
                             "use hw_targets.lava.quantize")


class LavaNetwork:
    """A ``lif`` network as Lava processes; :meth:`run` builds them, runs ``T`` steps and returns a Trace."""

    def __init__(self, net: AbstractNetwork, params: Params, fixed_point: bool = False, max_neurons: int = 512):
        self.net, self.fixed_point, self.max_neurons = net, fixed_point, max_neurons
        self.dtype = next(iter(params.values())).dtype
        self.params = {k: v.detach().to("cpu") for k, v in params.items()}
        self._np = {k: v.double().numpy() for k, v in self.params.items()}

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
        """Run on ``xs`` [T, B, n_in] (or [T, n_in]) from rest: spikes, v, y [T, B, ...]; ``extra`` holds
        the current (``"i"`` floating point, ``"u"`` fixed point, as the torch models name it)."""
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
        p = self.params
        y = torch.zeros(B, self.net.n_out, dtype=self.dtype)
        ys = []
        for z in spikes:  # the readout, on the host: the torch model's own expression
            y = self.net.kappa_out * y + z @ p["W_out"].T + p["b_out"]
            ys.append(y)
        y = torch.stack(ys) if ys else torch.zeros(0, B, self.net.n_out, dtype=self.dtype)
        return Trace(y=y, spikes=spikes, v=v, extra={"u" if self.fixed_point else "i": u})

    def _run_group(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run ``x`` [T, G, n_in] as G copies; returns spikes, v, u each [T, G, n]."""
        import hw_targets.lava as hl

        hl.ensure_lava()
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.dense.process import Dense
        from lava.proc.io.source import RingBuffer
        from lava.utils.weightutils import SignMode

        from hw_targets.lava.procs.recording_lif import RecordingLIF

        T, G, n_in = x.shape
        n, p, net = self.net.n_hidden, self._np, self.net
        eye = np.eye(G)
        W_in, W_rec = np.kron(eye, p["W_in"]), np.kron(eye, p["W_rec"])
        data = np.zeros((G * n_in, T))
        data[:, :T - 1] = x[1:].reshape(T - 1, G * n_in).T  # column t is sent at step t+1, arrives at t+2
        x0 = x[0].reshape(G * n_in)
        if self.fixed_point:
            def shift(s: np.ndarray, e: int) -> np.ndarray:
                return np.left_shift(s, e) if e > 0 else np.right_shift(s, -e)

            W_in, W_rec, data = W_in.astype(np.int64), W_rec.astype(np.int64), data.astype(np.int64)
            fixed = dict(num_weight_bits=8, sign_mode=SignMode.MIXED)
            src = RingBuffer(data=data)
            din = Dense(weights=W_in, num_message_bits=24, weight_exp=net.weight_exp_in, **fixed)
            din.a_buff.init = shift(W_in @ x0.astype(np.int64), net.weight_exp_in)
            drec = Dense(weights=W_rec, weight_exp=net.weight_exp_rec, **fixed)
            lif = RecordingLIF(num_steps=T, shape=(G * n,), du=net.du, dv=net.dv, vth=net.vth,
                               bias_mant=np.tile(p["b"], G).astype(np.int64),
                      bias_exp=np.full(G * n, net.bias_exp))
        else:
            src = RingBuffer(data=data)
            din = Dense(weights=W_in, num_message_bits=24)
            din.a_buff.init = W_in @ x0
            drec = Dense(weights=W_rec)
            lif = RecordingLIF(num_steps=T, shape=(G * n,), du=1.0 - net.beta, dv=1.0 - net.alpha, vth=float(net.v_th),
                      bias_mant=np.tile(p["b"], G))
        src.s_out.connect(din.s_in)
        din.a_out.connect(lif.a_in)
        lif.s_out.connect(drec.s_in)
        drec.a_out.connect(lif.a_in)
        try:
            lif.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag=self.tag))
            out = {k: np.asarray(getattr(lif, f"rec_{k}").get(), dtype=np.float64) for k in ("s", "v", "u")}
        finally:
            lif.stop()
        return tuple(out[k].reshape(T, G, n) for k in ("s", "v", "u"))


def loihi_params(params: Params) -> Params:
    """The integers a ``lif-loihi`` network computes with, for parameters that may hold other values (trained
    ones): the Dense weights ``dense_weights(W)`` (even, in [-256, 254]) and the bias mantissa ``round(b)``,
    as :mod:`models.lif_loihi` takes them; the same network, step for step, in the params' dtype."""
    from models.lif_loihi import dense_weights

    dtype = next(iter(params.values())).dtype
    out = dict(params)
    for k in ("W_in", "W_rec"):
        out[k] = dense_weights(params[k]).to(device=params[k].device, dtype=dtype)
    out["b"] = torch.round(params["b"].detach())
    return out


def export(net: AbstractNetwork, params: Params, fixed_point: bool = False, **quantize_kw) -> LavaNetwork:
    """``net`` as Lava processes: a ``lif`` network (``dynamics="lava"``, ``reset="zero"``, ``v_reset=0``, no
    refractory period) in floating point, or quantized first with ``fixed_point=True`` (``quantize_kw`` go to
    :func:`hw_targets.lava.quantize`); a ``lif-loihi`` network is Loihi's integer model already and runs in
    fixed point as it is (``fixed_point`` changes nothing for it; quantization options are refused), with the
    integers it computes with (:func:`loihi_params`; a bias beyond 13 bits is refused)."""
    net.check_params(params)
    check_finite(params, "Lava")
    if isinstance(net, LIFLoihi):
        if quantize_kw:
            raise ValueError(f"{', '.join(quantize_kw)}: a 'lif-loihi' network is already quantized")
        params = loihi_params(params)
        _check_integer_params(net, params)
        return LavaNetwork(net, params, fixed_point=True)
    check_lava_lif(net)
    if fixed_point:
        from hw_targets.lava.quantization import quantize

        qnet, qparams = quantize(net, params, **quantize_kw)
        return LavaNetwork(qnet, qparams, fixed_point=True)
    if quantize_kw:
        raise ValueError(f"{', '.join(quantize_kw)}: quantization options need fixed_point=True")
    return LavaNetwork(net, params, fixed_point=False)


def simulate_lava(net: AbstractNetwork, params: Params, xs: Tensor) -> Trace:
    """``neuro.simulate(..., backend="lava")``: Lava's floating-point LIF (a ``lif-loihi`` network is refused:
    it is Loihi's integer model, which ``backend="lava-fixed"`` runs)."""
    if isinstance(net, LIFLoihi):
        raise ValueError("model 'lif-loihi' is Loihi's integer model: backend='lava-fixed' runs it, "
                         "backend='lava' runs Lava's floating-point LIF")
    return export(net, params).run(xs)


def simulate_lava_fixed(net: AbstractNetwork, params: Params, xs: Tensor, **quantize_kw) -> Trace:
    """``neuro.simulate(..., backend="lava-fixed")``: Lava's bit-accurate LIF on the quantized network
    (a float ``lif`` network is quantized with ``quantize_kw``; a ``lif-loihi`` network runs as it is)."""
    return export(net, params, fixed_point=True, **quantize_kw).run(xs)
