"""Quantization of a float ``lif`` network (``dynamics="lava"``) to Loihi's integer LIF (:mod:`models.lif_loihi`).

One scale ``s`` (integer units of v per unit of voltage) maps every voltage-like quantity; Lava's
bit-accurate LIF adds activations shifted left 6 bits and compares v with ``vth << 6`` (REFERENCES.md,
"Lava 0.10 facts")::

    vth       = round(v_th s / 64)                           17 bits unsigned
    du        = 4095 - round(4096 beta)                      12 bits, so (4096 - (du + 1)) / 4096 ~ beta
    dv        = 4096 - round(4096 alpha)                     12 bits, so (4096 - dv) / 4096 ~ alpha
    W'        = 2 round(W s / (64 2^e) / 2)                  8-bit signed mantissa, shared weight exponent e
    b'        = round(b s / 2^bias_exp)                      13-bit signed mantissa, 3-bit exponent
    W_out, b_out unchanged (the readout stays in floating point, on the host)

``s = 64 vth / v_th`` with ``vth = 4096`` by default (so that v spans +-32 thresholds in 24 bits), or
given as ``scale``. Each weight exponent (and the bias exponent) is the smallest that holds its matrix
(the finest resolution) unless given. A value that does not fit (weights beyond 8 bits after the
exponent, vth beyond 17 bits, bias beyond 13 bits after exponent 7, a decay beyond 12 bits) is an error
naming the value and the scale or exponent that would fit, or, with ``saturate=True``, clipped.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from hw_targets.lava._check import check_finite, check_lava_lif
from models.lif_loihi import LIMITS, LIFLoihi
from neuro.contract import AbstractNetwork, Params

__all__ = ["QuantizationReport", "quantize", "quantization_error"]

_MANT = (-128, 127)  # 8-bit signed weight mantissa; the Dense weight is twice it (mixed sign mode)
_BIAS = (-4096, 4095)


def _amax(t: Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


@dataclasses.dataclass
class QuantizationReport:
    """What quantization did: the integer settings and the largest error of each quantity, in the float
    network's units (and relative to the quantity's largest magnitude)."""

    scale: float
    settings: dict[str, int]
    errors: dict[str, tuple[float, float]]  # name -> (max abs error, max |value|)
    saturated: list[str]

    def __str__(self) -> str:
        lines = [f"scale {self.scale:.6g} units of v per unit of voltage; "
                 + ", ".join(f"{k}={v}" for k, v in self.settings.items())]
        for name, (err, ref) in self.errors.items():
            rel = f" ({err / ref:.2%} of max {ref:.4g})" if ref > 0 else ""
            lines.append(f"  {name:<8} max error {err:.4g}{rel}")
        if self.saturated:
            lines.append("  saturated: " + ", ".join(self.saturated))
        return "\n".join(lines)


def _fit_weights(name: str, W: Tensor, s: float, e: int | None, saturate: bool,
                 saturated: list[str]) -> tuple[Tensor, int]:
    Wa = W * s / 64.0  # activation units (a_in)
    lo, hi = LIMITS[f"weight_exp_{name[2:]}"]

    def mant(exp: int) -> Tensor:
        return torch.round(Wa / 2.0 ** exp / 2.0)

    def fits(m: Tensor) -> bool:
        return bool(m.numel() == 0 or (m.max() <= _MANT[1] and m.min() >= _MANT[0]))

    if e is None:
        if float(Wa.abs().max()) == 0.0:
            e = 0
        else:
            e = next((x for x in range(lo, hi + 1) if fits(mant(x))), None)
            if e is None:
                if not saturate:
                    need = float(Wa.abs().max()) / (2 * 127.5 * 2.0 ** hi)
                    raise ValueError(f"{name}: max |w| = {float(W.abs().max()):.6g} is {float(Wa.abs().max()):.6g} "
                                     f"activation units at scale {s:.6g}, beyond 8 bits even at weight_exp={hi}: "
                                     f"use scale <= {s / need:.6g}")
                e = hi
    elif not isinstance(e, int) or isinstance(e, bool) or not lo <= e <= hi:
        raise ValueError(f"weight_exp for {name} = {e!r} is invalid: expected an integer in [{lo}, {hi}]")
    m = mant(e)
    if not fits(m):
        if not saturate:
            big = float(m.abs().max())
            fit_e = e + max(1, math.ceil(math.log2((big + 0.5) / 127.5)))
            raise ValueError(f"{name}: max |w| = {float(W.abs().max()):.6g} needs a mantissa of {big:.0f} at "
                             f"weight_exp={e} and scale {s:.6g}, beyond 8 bits ([{_MANT[0]}, {_MANT[1]}]): "
                             f"use weight_exp >= {fit_e}, scale <= {s * 127 / big:.6g}, or saturate=True")
        saturated.append(f"{name} ({int(((m > _MANT[1]) | (m < _MANT[0])).sum())} weights)")
        m = m.clamp(*_MANT)
    return 2.0 * m, e


def quantize(net: AbstractNetwork, params: Params, *, vth: int = 4096, scale: float | None = None,
             weight_exp_in: int | None = None, weight_exp_rec: int | None = None, bias_exp: int | None = None,
             saturate: bool = False, report: bool = False):
    """Map a float ``lif`` network to Loihi's integer model: ``(qnet, qparams)`` (``report=True``: and a
    :class:`QuantizationReport`). ``neuro.simulate(qnet, qparams, xs)`` is then Loihi's arithmetic bit for
    bit (the same as ``backend="lava-fixed"``); qparams have the dtype of ``params``.

    A :class:`models.stack.Stack` of ``lif`` layers becomes a stack of ``lif-loihi`` layers: one scale for every
    layer (their thresholds and decays are the same), each layer's weight and bias exponents its own (the
    smallest that hold its matrices, unless given; ``Stack.per_layer``); the report names each layer's
    quantities ``"l.W_in"``, ...; the wiring (``connectivity``) is kept."""
    from models.stack import Stack

    if isinstance(net, Stack):
        return _quantize_stack(net, params, vth=vth, scale=scale, weight_exp_in=weight_exp_in,
                               weight_exp_rec=weight_exp_rec, bias_exp=bias_exp, saturate=saturate, report=report)
    check_lava_lif(net)
    net.check_params(params)
    check_finite(params, "Loihi's integer model")
    dtype = next(iter(params.values())).dtype
    p = {k: v.detach().to(device="cpu", dtype=torch.float64) for k, v in params.items()}
    saturated: list[str] = []
    vmax = LIMITS["vth"][1]
    if scale is None:
        if isinstance(vth, bool) or not isinstance(vth, int) or not 1 <= vth <= vmax:
            raise ValueError(f"vth={vth!r} is invalid: expected an integer in [1, {vmax}] (17 bits unsigned)")
        s = 64.0 * vth / net.v_th
    else:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 or not math.isfinite(scale):
            raise ValueError(f"scale={scale!r} is invalid: expected a positive number")
        s = float(scale)
    vth_q = round(net.v_th * s / 64.0)
    if not 1 <= vth_q <= vmax:
        if not saturate or vth_q < 1:
            raise ValueError(f"vth = v_th * scale / 64 = {vth_q} at scale {s:.6g} is beyond 17 bits [1, {vmax}]: "
                             f"use a scale in [{64 / net.v_th * 0.5:.6g}, {64 * vmax / net.v_th:.6g}]")
        saturated.append(f"vth ({vth_q} -> {vmax})")
        vth_q = vmax
    du = 4095 - round(4096 * net.beta)
    dv = 4096 - round(4096 * net.alpha)
    for name, value, tau in (("du", du, "tau_syn"), ("dv", dv, "tau_mem")):
        if not 0 <= value <= 4095:
            if not saturate:
                raise ValueError(f"{name}={value} (from {tau}={getattr(net, tau)!r}, dt={net.dt!r}) is beyond 12 bits "
                                 f"[0, 4095]: Loihi's decays resolve 1/4096 per step; use a shorter {tau}, "
                                 "or saturate=True")
            saturated.append(f"{name} ({value})")
    du, dv = min(max(du, 0), 4095), min(max(dv, 0), 4095)

    W_in, e_in = _fit_weights("W_in", p["W_in"], s, weight_exp_in, saturate, saturated)
    W_rec, e_rec = _fit_weights("W_rec", p["W_rec"], s, weight_exp_rec, saturate, saturated)
    b_v = p["b"] * s
    lo, hi = LIMITS["bias_exp"]
    if bias_exp is None:
        bias_exp = next((x for x in range(lo, hi + 1) if _amax(torch.round(b_v / 2.0 ** x)) <= 4095), None)
        if bias_exp is None:
            if not saturate:
                raise ValueError(f"b: max |b| = {float(p['b'].abs().max()):.6g} is beyond a 13-bit mantissa even at "
                                 f"bias_exp={hi} at scale {s:.6g}: use scale <= "
                                 f"{s * 4095 * 2 ** hi / float(b_v.abs().max()):.6g}")
            bias_exp = hi
    elif isinstance(bias_exp, bool) or not isinstance(bias_exp, int) or not lo <= bias_exp <= hi:
        raise ValueError(f"bias_exp={bias_exp!r} is invalid: expected an integer in [{lo}, {hi}]")
    b = torch.round(b_v / 2.0 ** bias_exp)
    if b.numel() and (b.max() > _BIAS[1] or b.min() < _BIAS[0]):
        if not saturate:
            raise ValueError(f"b: max |b| = {float(p['b'].abs().max()):.6g} needs a mantissa of "
                             f"{float(b.abs().max()):.0f} "
                             f"at bias_exp={bias_exp}, beyond 13 bits: use a larger bias_exp, or saturate=True")
        saturated.append("b")
        b = b.clamp(*_BIAS)

    qnet = LIFLoihi(n_in=net.n_in, n_hidden=net.n_hidden, n_out=net.n_out, du=du, dv=dv, vth=vth_q,
                    weight_exp_in=e_in, weight_exp_rec=e_rec, bias_exp=bias_exp, dt=net.dt, tau_out=net.tau_out,
                    scale=s, surrogate=net.surrogate, surrogate_width=net.surrogate_width,
                    surrogate_scale=net.surrogate_scale, connectivity=net.connectivity)
    qparams = {"W_in": W_in, "W_rec": W_rec, "b": b, "W_out": p["W_out"], "b_out": p["b_out"]}
    qparams = {k: v.to(dtype) for k, v in qparams.items()}
    if report:
        return qnet, qparams, quantization_error(net, params, qnet, qparams, saturated)
    return qnet, qparams


def _quantize_stack(net, params: Params, *, report: bool, **kw):
    """:func:`quantize` for a stack of ``lif`` layers: each layer quantized as a one-layer network at the scale of
    the first, then the stack of ``lif-loihi`` layers with each layer's exponents."""
    from models.stack import Stack

    if net.layer != "lif":
        raise ValueError(f"a stack of {net.layer!r} layers cannot be quantized: only a stack of 'lif' layers (Lava's "
                         "LIF process) can")
    net.check_params(params)
    layers, per_layer, qparams, errors, saturated, scale = [], [], {}, {}, [], kw.pop("scale")
    for l, layer in enumerate(net.layers):
        lp = net.layer_params(params, l)
        lp.update(W_out=params["W_out"].new_zeros(net.n_out, layer.n_hidden), b_out=params["b_out"])
        try:
            qlayer, q, rep = quantize(layer, lp, scale=scale, report=True, **kw)
        except ValueError as e:
            raise ValueError(f"layer {l}: {e}") from None
        scale = qlayer.scale
        layers.append(qlayer)
        per_layer.append({f: getattr(qlayer, f) for f in ("weight_exp_in", "weight_exp_rec", "bias_exp")})
        qparams.update({f"{l}.{k}": q[k] for k in ("W_in", "W_rec", "b")})
        errors.update({f"{l}.{k}" if k in ("W_in", "W_rec", "b") else k: v for k, v in rep.errors.items()})
        saturated += [f"layer {l}: {x}" for x in rep.saturated]
    first = layers[0]
    common = {f: getattr(first, f) for f in ("du", "dv", "vth", "dt", "tau_out", "scale", "surrogate", "surrogate_width",
                                            "surrogate_scale")}
    qnet = Stack(n_in=net.n_in, n_out=net.n_out, layer="lif-loihi", sizes=net.sizes, skip=net.skip,
                 options=tuple(sorted(common.items())), per_layer=tuple(tuple(sorted(o.items())) for o in per_layer),
                 connectivity=net.connectivity, feedforward_scale=net.feedforward_scale)
    dtype = next(iter(params.values())).dtype
    qparams.update(W_out=params["W_out"].detach().to(dtype), b_out=params["b_out"].detach().to(dtype))
    qparams = {k: qparams[k].to(dtype) for k in qnet.param_shapes()}
    if report:
        settings = {f"{l}.{f}": v for l, o in enumerate(per_layer) for f, v in o.items()}
        settings.update({f: common[f] for f in ("vth", "du", "dv")})
        return qnet, qparams, QuantizationReport(scale=scale, settings=settings, errors=errors, saturated=saturated)
    return qnet, qparams


def dequantize(qnet: LIFLoihi, qparams: Params) -> dict[str, Tensor]:
    """The float values the integer parameters stand for (float64): W_in, W_rec, b, v_th, beta, alpha."""
    s = qnet.scale
    return {"W_in": qparams["W_in"].double() * 2.0 ** qnet.weight_exp_in * 64.0 / s,
            "W_rec": qparams["W_rec"].double() * 2.0 ** qnet.weight_exp_rec * 64.0 / s,
            "b": qparams["b"].double() * 2.0 ** qnet.bias_exp / s,
            "v_th": torch.tensor(qnet.threshold / s, dtype=torch.float64),
            "beta": torch.tensor(qnet.beta, dtype=torch.float64),
            "alpha": torch.tensor(qnet.alpha, dtype=torch.float64)}


def quantization_error(net: AbstractNetwork, params: Params, qnet: LIFLoihi, qparams: Params,
                       saturated: list[str] | None = None) -> QuantizationReport:
    """The largest error of each quantity the integer network stands for, in the float network's units."""
    back = dequantize(qnet, qparams)
    ref = {"W_in": params["W_in"].double(), "W_rec": params["W_rec"].double(), "b": params["b"].double(),
           "v_th": torch.tensor(net.v_th, dtype=torch.float64), "beta": torch.tensor(net.beta, dtype=torch.float64),
           "alpha": torch.tensor(net.alpha, dtype=torch.float64)}
    errors = {k: (_amax(back[k].cpu() - ref[k].cpu()), _amax(ref[k]))
              for k in ref}
    settings = {f: getattr(qnet, f) for f in ("vth", "du", "dv", "weight_exp_in", "weight_exp_rec", "bias_exp")}
    return QuantizationReport(scale=qnet.scale, settings=settings, errors=errors, saturated=list(saturated or []))
