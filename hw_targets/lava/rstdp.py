"""Reward-modulated STDP on the chip, in the form of Lava's ``RewardModulatedSTDP``
(``lava/proc/learning_rules/r_stdp_learning_rule.py``; Florian 2007, "Reinforcement learning through
modulation of spike-timing-dependent synaptic plasticity", Neural Comput. 19(6); Izhikevich 2007, "Solving
the distal reward problem through linkage of STDP and dopamine signaling", Cereb. Cortex 17(10))::

    x_j(t)  = exp(-1/tau_plus) x_j(t-1) + A_plus a_j(t)          presynaptic trace (Loihi x1)
    y_i(t)  = exp(-1/tau_minus) y_i(t-1) + A_minus z_i(t)        postsynaptic trace (y1, sent by the neuron)
    e_ij(t) = (1 - c_e) e_ij(t-1) + z_i(t) x_j(t) - a_j(t) y_i(t)   eligibility (tag t): LTP at a post spike,
                                                                 LTD at a pre spike; c_e ~ 1/tau_e
    W_ij   <- W_ij + eta R_i(t) e_ij(t-1)                         R: the reward, a graded third factor (y2)

Learning strings: ``dt = y0*x1 - x0*y1 - c_e*u0*t``, ``dw = u0*y2*t``; ``c_e`` is rounded to ``m 2^e``
(:func:`hw_targets.lava.learning.literal`), ``A_plus`` is the trace impulse, ``A_minus`` and ``eta`` are
folded into the neuron's and the reward synapse's gains (exact in floating point). Spike times are those
seen by the synapse: a presynaptic spike reaches the synapse one step before the neuron integrates it
(the Dense delay). The reward ``R`` [T] (global) or [T, n] is an input of the run, one step late as the
chip needs (handled by the run). ``W_in``, ``W_rec`` learn; run it with
``export_learning(net, params, rstdp_form(net, ...), eta).run(xs, reward)``.
"""

from __future__ import annotations

import math

from hw_targets.lava._check import check_lava_lif
from hw_targets.lava.learning import G, LoihiForm, literal
from neuro.contract import AbstractNetwork, check_positive

__all__ = ["rstdp_form"]


def rstdp_form(net: AbstractNetwork, a_plus: float = 1.0, a_minus: float = 1.0, tau_plus: float = 10.0,
               tau_minus: float = 10.0, tau_e: float = 16.0) -> LoihiForm:
    """The Loihi form of reward-modulated STDP (module docstring) on ``net`` (a Lava-exportable ``lif``);
    time constants in steps."""
    check_lava_lif(net)
    for name, value in dict(a_plus=a_plus, a_minus=a_minus, tau_plus=tau_plus, tau_minus=tau_minus,
                            tau_e=tau_e).items():
        check_positive(name, value)
    m, e = literal(1.0 / tau_e)
    c = m * 2.0 ** e
    return LoihiForm(dw="u0*y2*t", dd=None, dt=f"y0*x1 - x0*y1 - {m}*2^{e}*u0*t", x_taus=(float(tau_plus),),
                     signs=(1,), y_gains=(a_minus * G,), y_decay=math.exp(-1.0 / tau_minus), y_impulse=1.0,
                     post_kind=2, delay=1, kappa=0.0, lam=1.0 - c, x_impulses=(float(a_plus),), third_sign=1.0,
                     stdp=True,
                     rounding={"1/tau_e (eligibility decay per step)": (1.0 / tau_e, m, e, c)})
