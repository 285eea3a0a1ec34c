"""The network of ``neuro bench sim`` (:mod:`neuro.bench.sim`): its settings (time constants, the Poisson
input, the weight scales that put it at about 13 Hz), the variants measured (labels, order) and the Brian2
reference figures, :func:`build_lif` (the ``lif`` network, its weights and input), and one runner per variant
(``xs`` [T, 1, N_IN] -> spikes or None).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

# -- the benchmark network -----------------------------------------------------------------------------
DT = 1.0  # ms
TAU_MEM = 20.0  # ms
TAU_SYN = 5.0  # ms
N_IN = 100  # Poisson input channels
P_IN = 0.05  # input spikes per channel per step (50 Hz)
K_IN = 10  # input channels per neuron (fixed in-degree, chosen at random)
W_IN = 1.95  # input weight, in v_th per unit of steady-state gain
REC_SCALE = 1.0  # recurrent std * sqrt(N), same units
SEED = 0
TARGET_HZ = (10.0, 20.0)

#: Brian2 cpp_standalone, recurrent LIF at ~13.6 Hz, T = 1000, batch 1, 1 thread (+4.3 s compile), steps/s.
#: Measured earlier on this machine (REFERENCES.md, "Peers measured on this machine"), NOT in this run.
BRIAN2_CPP_REF = {256: 451_000.0, 1024: 48_000.0, 4096: 2_900.0}
BRIAN2_LABEL = "Brian2 cpp_standalone (reference, measured earlier, not in this run)"
BRIAN2_NOTE = ("REFERENCES.md 'Peers measured on this machine': recurrent LIF ~13.6 Hz, T = 1000, batch 1, "
               "1 thread, plus 4.3 s compile; measured earlier, not in this run")

LABELS = {
    "lif_compiled": "lif (neuro.simulate backend='compiled': event-driven numba loop, records spikes/y)",
    "lif_simulate": "lif (neuro.simulate, records v/i/spikes/y)",
    "lif_step": "lif (net.step loop, no recording)",
    "rate_simulate": "rate (neuro.simulate, records h/y)",
    "rate_step": "rate (net.step loop, no recording)",
    "norse": "norse 1.1 LIFRecurrentCell",
    "plain": "plain torch loop (recurrent LIF)",
    "matvec": "dense matvec alone (F.linear(z, W_rec))",
}
ORDER = list(LABELS)

Runner = Callable[[torch.Tensor], Any]  # xs [T, 1, N_IN] -> spikes ([T, 1, N] tensor or list of [1, N]) or None


# -- building the networks -----------------------------------------------------------------------------
def build_lif(n: int, steps: int, seed: int = SEED):
    """The ``lif`` network, its parameters (benchmark weights) and the Poisson input ``xs`` [T, 1, N_IN]."""
    import models

    net = models.make("lif", n_in=N_IN, n_hidden=n, n_out=1, dt=DT, tau_mem=TAU_MEM, tau_syn=TAU_SYN,
                      bias_mean=0.0, bias_std=0.0)  # b = 0: the benchmark sets its own weights below
    g = torch.Generator().manual_seed(seed)
    unit = net.v_th / net.gain()
    params = net.init_params(seed=seed)
    idx = torch.rand(n, N_IN, generator=g).argsort(dim=1)[:, :K_IN]  # exactly K_IN input channels per neuron
    mask = torch.zeros(n, N_IN, dtype=torch.float64).scatter_(1, idx, 1.0)
    params["W_in"] = (unit * W_IN * mask).float()
    params["W_rec"] = (unit * REC_SCALE / math.sqrt(n) * torch.randn(n, n, generator=g, dtype=torch.float64)).float()
    g_in = torch.Generator().manual_seed(seed + 1)  # the same input at every N
    xs = (torch.rand(steps, 1, N_IN, generator=g_in) < P_IN).float()
    return net, params, xs


def _simulate_runner(net, params) -> Runner:
    import neuro

    def run(xs):
        tr = neuro.simulate(net, params, xs)
        return tr.spikes

    return run


def _compiled_runner(net, params) -> Runner:
    import neuro

    def run(xs):
        return neuro.simulate(net, params, xs, backend="compiled", record=("spikes", "y")).spikes

    return run


def _step_runner(net, params) -> Runner:
    spiking = net.spiking

    def run(xs):
        zs = []
        with torch.no_grad():
            state = net.init_state(params, xs.shape[1])
            step = net.step
            for x in xs:
                state, _ = step(params, state, x)
                if spiking:
                    zs.append(state.z)
        return zs if spiking else None

    return run


def _plain_runner(net, params) -> Runner:
    """The recurrent LIF of ``net`` (exact dynamics, subtractive reset, v_leak = b = 0) in a few torch ops."""
    W_in, W_rec = params["W_in"], params["W_rec"]
    alpha, beta, kappa, v_th = net.alpha, net.beta, net.kappa, net.v_th

    def run(xs):
        zs = []
        with torch.no_grad():
            n = W_rec.shape[0]
            v = torch.zeros(xs.shape[1], n)
            i = torch.zeros_like(v)
            z = torch.zeros_like(v)
            for x in xs:
                i = i + F.linear(x, W_in) + F.linear(z, W_rec)
                v = alpha * v + kappa * i
                z = (v > v_th).float()
                v = v - v_th * z
                i = beta * i
                zs.append(z)
        return zs

    return run


def _norse_runner(net, params) -> Runner:
    from norse.torch import LIFParameters, LIFRecurrentCell

    p = LIFParameters(tau_syn_inv=torch.as_tensor(1.0 / (TAU_SYN * 1e-3)),
                      tau_mem_inv=torch.as_tensor(1.0 / (TAU_MEM * 1e-3)),
                      v_leak=torch.as_tensor(0.0), v_th=torch.as_tensor(net.v_th), v_reset=torch.as_tensor(0.0))
    cell = LIFRecurrentCell(N_IN, net.n_hidden, p=p, input_weights=params["W_in"].clone(),
                            recurrent_weights=params["W_rec"].clone(), autapses=True, dt=DT * 1e-3)

    def run(xs):
        zs = []
        with torch.no_grad():
            state = None
            for x in xs:
                z, state = cell(x, state)
                zs.append(z)
        return zs

    return run


def _matvec_runner(params) -> Runner:
    W_rec = params["W_rec"]
    g = torch.Generator().manual_seed(SEED + 2)
    z = (torch.rand(1, W_rec.shape[0], generator=g) < 0.013).float()

    def run(xs):
        with torch.no_grad():
            for _ in xs:
                F.linear(z, W_rec)
        return None

    return run


# -- sparse networks (``neuro bench sim --sparse``) ---------------------------------------------------------
#: recurrent connection probabilities of the sparse comparison
SPARSE_P = (0.01, 0.1, 1.0)
#: the one-to-one network: each neuron's own Poisson source at the total input rate of the network above
#: (K_IN channels at P_IN), P_ONE spikes per step, through one synapse of weight W_IN
P_ONE = K_IN * P_IN


def build_lif_sparse(n: int, steps: int, p: float, seed: int = SEED):
    """The network of :func:`build_lif` with recurrent connection probability ``p``, written with the synapses it
    has: a sparse ``lif`` network (``connectivity={"W_in": "fan-in:K_IN", "W_rec": "random:p"}``: each neuron
    hears ``K_IN`` input channels, each pair of neurons is connected with probability ``p``), the same network
    written dense (no connectivity: the same ``W_in`` and ``W_rec`` with zeros off the masks), their parameters
    (``W_rec`` std ``REC_SCALE / sqrt(p N)``: the summed recurrent input of a unit keeps the variance of the dense
    network) and the input ``xs`` [T, 1, N_IN] of :func:`build_lif`."""
    import models

    dense, params, xs = build_lif(n, steps, seed)
    net = models.make("lif", n_in=N_IN, n_hidden=n, n_out=1, dt=DT, tau_mem=TAU_MEM, tau_syn=TAU_SYN,
                      bias_mean=0.0, bias_std=0.0, connectivity={"W_in": f"fan-in:{K_IN}", "W_rec": f"random:{p}"})
    g = torch.Generator().manual_seed(seed + 3)
    unit = net.v_th / net.gain()
    w = unit * REC_SCALE / math.sqrt(p * n) * torch.randn(n, n, generator=g, dtype=torch.float64)
    params["W_in"] = (unit * W_IN * net.masks["W_in"]).float()
    params["W_rec"] = (w * net.masks["W_rec"]).float()
    return net, dense, params, xs


def build_one_to_one(n: int, steps: int, seed: int = SEED):
    """The network a Brian2 user writes first: ``n`` LIF neurons, each driven by its own Poisson source
    (``P_ONE`` spikes per step) through one synapse of weight ``W_IN`` (``connectivity={"W_in": "one-to-one"}``),
    dense random recurrence (std ``REC_SCALE / sqrt(N)``), about 13 Hz. Returns the sparse-input network, the
    same network with a dense ``W_in`` (zeros off the diagonal), the parameters and ``xs`` [T, 1, n]."""
    import models

    opts = dict(n_in=n, n_hidden=n, n_out=1, dt=DT, tau_mem=TAU_MEM, tau_syn=TAU_SYN, bias_mean=0.0, bias_std=0.0)
    net = models.make("lif", connectivity={"W_in": "one-to-one"}, **opts)
    dense = models.make("lif", **opts)
    g = torch.Generator().manual_seed(seed)
    unit = net.v_th / net.gain()
    params = dense.init_params(seed=seed)
    params["W_in"] = (unit * W_IN * torch.eye(n, dtype=torch.float64)).float()
    params["W_rec"] = (unit * REC_SCALE / math.sqrt(n) * torch.randn(n, n, generator=g, dtype=torch.float64)).float()
    g_in = torch.Generator().manual_seed(seed + 1)
    xs = (torch.rand(steps, 1, n, generator=g_in) < P_ONE).float()
    return net, dense, params, xs
