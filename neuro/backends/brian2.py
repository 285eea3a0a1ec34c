"""The Brian2 backend: ``neuro.simulate(net, params, xs, backend="brian2", target=...)`` for ``lif``, ``alif``,
the rate RNN ``rate``, sparse networks of each (``connectivity``) and stacks of ``lif`` or ``alif`` layers
(:class:`models.stack.Stack`, dense or sparse, with or without skip connections).

Brian2 (Stimberg, Brette & Goodman 2019, "Brian 2, an intuitive and efficient neural simulator", eLife
8:e47314) integrates the same equations as :mod:`models.lif` / :mod:`models.alif`, built from the model's own
parameters (time in ms, ``v`` and the synaptic variable ``isyn`` dimensionless)::

    dv/dt    = (v_leak + b - v + isyn) / tau_mem          disyn/dt = -isyn / tau_syn

with ``method="exact"`` for ``dynamics="exact"`` (Brian2 solves the linear system itself, symbolically: an
independent derivation of alpha, beta and kappa) and ``method="euler"`` for ``dynamics="euler"``. Each layer
is one ``NeuronGroup`` (a single-layer network is the one layer of a stack of one). One Brian2 time step of
``dt`` runs these objects in order (all on one clock; Brian2 sorts by slot, then by ``order`` within a
slot: every layer's state update, refractory hold, threshold, adaptation and reset are moved into the
``groups`` slot, layer ``l`` at orders ``10 l + 0..5``, so that the layers run bottom-up)::

    start                   isyn += I_in(t, i)        the input jump W_in x_t (a TimedArray): layer 0 (skip: all)
    groups, 10 l + 0        isyn^l_post += W^l_in[post, pre] for every spike of layer l-1 in THIS step  (l > 0)
    groups, 10 l + 1        (v, isyn) <- exact or Euler step      v~, i_t = beta j
    groups, 10 l + 2        ref = r > 0; v = v_reset where ref; r = max(r - 1, 0)          (refractory > 0 only)
    groups, 10 l + 3        z_t = v > v_th (+ beta_a a)  and not ref
    groups, 10 l + 4        a = rho a                                                       (alif only)
    groups, 10 l + 5        v -= v_th (subtract) or v = v_reset (zero); r = refractory; a += 1
    before_synapses         isyn recorded (the torch i_t)
    synapses                isyn^l_post += W^l_rec[post, pre] for every spike of layer l in this step
    end                     v (and a) recorded

The feed-forward synapses between layers (delay 0; their spike push and propagation both run in their own
slot, moved with ``when``/``order`` to just after the layer below's threshold) therefore deliver
``W^l_in z^{l-1}_t`` of the same step before layer ``l`` integrates, the stack's ``I^l_t = W^l_in z^{l-1}_t +
W^l_rec z^l_{t-1}``: an exact same-step construction, for every target (cpp_standalone generates its run loop
from the same sorted objects). The recurrent synapses run in the ``synapses`` slot after every layer, so the
spikes of step t-1 are in ``isyn`` when step t adds its input: ``j = i_{t-1} + W_in x_t + W_rec z_{t-1}``,
the one-step recurrent delay of the torch model.

The refractory counter ``r`` is written out rather than taken from Brian2's ``refractory=`` keyword, which
would hold ``v`` at its value after the reset (the model clamps it to ``v_reset``) and would count the
period from the spike time (one step fewer held). With ``tau_syn == tau_mem`` both equations use one symbol,
so that the exact solver sees the repeated eigenvalue. Thresholds are strict (``v > v_th``), as in the model.

The input current ``W_in x_t`` (real valued inputs; with skip connections also the ``x`` columns of every
layer's ``W_in``) is computed once in float64 torch and handed to Brian2 as a TimedArray; the recurrent and
feed-forward synapses, the dynamics, spikes, refractoriness, adaptation and reset run in Brian2. Synapses
exist only where the network's masks (:attr:`neuro.contract.AbstractNetwork.masks`) have them:
``Synapses.connect(i=pre, j=post)`` from the mask's nonzeros, weights from the masked parameters (entries off
the mask are never read, as in torch); block diagonal over the batch (the ``B`` sequences are ``B`` copies of
each layer in one group of ``B n_l`` neurons). ``v`` is recorded at the end of the step, ``i`` before the
recurrent synapses; the layers' units are put side by side as in the torch state. The leaky readout ``y_t =
kappa_out y_{t-1} + W_out z_t + b_out`` (a stack: over the units its readout reads) is computed from Brian2's
spikes in float64 torch, as in the model.

Targets: ``"numpy"``, ``"cython"`` (compiled code, cached by Brian2 in ``~/.cython``) and ``"cpp_standalone"``
(a C++ project built in a temporary directory, see :class:`_Standalone`: built once per network structure,
key = the model's hyper-parameters, ``n_in``, rows, steps, what is recorded; later calls only write the new
weights, inputs and initial state as binary files and run the compiled program with Brian2's ``run_args``
command line; the directories are removed when the cache is cleared (:func:`clear_cache`), when a structure
is evicted (at most :data:`CACHE_SIZE` kept) or at exit). Brian2 computes in float64; the trace has the dtype of
``params``. :class:`Brian2Forward` is the forward function of the perturbation rules (``neuro.rules.node``)
for the single-layer spiking models (sparse or dense; stacks are refused).

The rate RNN (:mod:`models.rate`) is a discrete map, which Brian2 runs as one group of ``B n`` neurons with
no differential equation (``h``, ``I_rec``, ``b``) on a clock of 1 ms (the model has no time constant, only
``alpha``), and the same block-diagonal recurrent synapses (those of its mask) carrying a summed variable::

    groups      I_rec = sum_pre w[pre, post] h_pre     (Synapses, ``I_rec_post = w * h_pre : 1 (summed)``)
    before_end  h = (1 - alpha) h + alpha tanh(I_in(t, i) + I_rec + b)      (``run_regularly``)
    end         h recorded (StateMonitor)

The summed variable is computed in the ``groups`` slot, before the update of ``before_end`` overwrites ``h``,
so that every ``h_t`` sees the ``h_{t-1}`` of all neurons: ``i_t = W_in x_t + W_rec h_{t-1} + b``, with
``W_in x_t`` again a TimedArray computed in float64 torch. ``h`` is always recorded (``record`` is ignored:
the readout needs it), and the linear readout ``y_t = W_out h_t + b_out`` is computed from it in float64 torch.

The code lives in three private modules: the checks, the Brian2 objects and the arrays of a run in
:mod:`neuro.backends._brian2_network`, the runners of each target and the cache of built networks in
:mod:`neuro.backends._brian2_runner`, :class:`Brian2Forward` in :mod:`neuro.backends._brian2_forward`;
their public names are re-exported here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neuro.backends import Trace
from neuro.backends._brian2_forward import Brian2Forward
from neuro.backends._brian2_network import DYNAMICS as DYNAMICS
from neuro.backends._brian2_network import (
    MODELS,
    STACK_LAYERS,
    TARGETS,
    _b2,
    _inputs,
    _Outputs,
    _rate_inputs,
    check_model,
    check_target,
    input_jumps,
)
from neuro.backends._brian2_network import RATE_DT as RATE_DT
from neuro.backends._brian2_network import _compiler_problem as _compiler_problem
from neuro.backends._brian2_runner import _CACHE as _CACHE
from neuro.backends._brian2_runner import CACHE_SIZE, _get, clear_cache
from neuro.contract import AbstractNetwork, Params

__all__ = ["Brian2Forward", "CACHE_SIZE", "MODELS", "STACK_LAYERS", "TARGETS", "clear_cache", "simulate"]
# imported "as" themselves: DYNAMICS, RATE_DT, _CACHE and _compiler_problem, re-exported for callers of this module

#: Brian2's own time (seconds) for the network run of the last :func:`simulate` call: no build, no code
#: generation, no input/output files (what ``neuro bench brian2`` reports next to the call's wall time)
last_run_s: float | None = None


# -- the public functions ------------------------------------------------------------------------------------
def simulate(net: AbstractNetwork, params: Params, xs: Tensor, target: str = "numpy", record: bool = True) -> Trace:
    """Run ``net`` from rest on ``xs`` [T, B, n_in] in Brian2 (``target``: numpy, cython or cpp_standalone).

    Returns a :class:`neuro.backends.Trace` like the torch backend's (``spikes``, ``v``, ``y``, ``extra``
    ``i`` and, for alif, ``a``; all [T, B, n]; for the rate RNN ``h`` and ``y``) in the dtype of ``params``.
    ``record=False`` records spikes only (``v`` and ``extra`` are then ``None`` / empty): what a benchmark
    times; the rate RNN records ``h`` either way.
    """
    check_model(net)
    check_target(target)
    _b2()
    global last_run_s
    T, B, _ = xs.shape
    sim = _get(net, B, T, bool(record), target)
    I_in = input_jumps(net, params, xs)
    out = sim(_rate_inputs(net, params, I_in, B) if net.name == "rate" else _inputs(net, params, I_in, None, B))
    last_run_s = out.run_s
    return _trace(net, params, out, T, B)


def _readout(net: AbstractNetwork, params: Params, z: Tensor, y0: Tensor | None = None) -> Tensor:
    """``y_t = kappa_out y_{t-1} + W_out z_t + b_out`` over ``z`` [T, B, N] (a stack: the units its readout
    reads) in float64."""
    W, b = params["W_out"].detach().cpu().double(), params["b_out"].detach().cpu().double()
    if net.name == "stack":
        z = z[..., net.readout_units]
    drive = z @ W.T + b
    y = torch.zeros(z.shape[1], W.shape[0], dtype=torch.float64) if y0 is None else y0
    ys = []
    for d in drive:
        y = net.readout_decay * y + d
        ys.append(y)
    return torch.stack(ys)


def _trace(net: AbstractNetwork, params: Params, out: _Outputs, T: int, B: int) -> Trace:
    p = next(iter(params.values()))
    n = net.n_hidden

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).reshape(T, B, n)

    cast = lambda u: u.to(dtype=p.dtype, device=p.device)  # noqa: E731
    if out.h is not None:  # the rate RNN: y_t = W_out h_t + b_out in float64
        h = t(out.h)
        y = h @ params["W_out"].detach().cpu().double().T + params["b_out"].detach().cpu().double()
        return Trace(y=cast(y), h=cast(h))
    z = t(out.spikes)
    y = _readout(net, params, z)
    extra = {}
    if out.i is not None:
        extra["i"] = t(out.i).to(p.dtype)
    if out.a is not None:
        extra["a"] = t(out.a).to(p.dtype)
    return Trace(y=cast(y), spikes=cast(z), v=None if out.v is None else cast(t(out.v)),
                 extra={k: cast(v) for k, v in extra.items()})
