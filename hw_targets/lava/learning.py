"""On-chip learning: the ``three-factor`` rule as Lava's ``Loihi3FLearningRule`` on ``LearningDense``.

``export_learning(net, params, rule, eta) -> LavaLearningNetwork``; ``.run(xs, third_factor) -> (Trace,
new_params)`` runs one sequence in Lava (floating point) while ``W_in`` and ``W_rec`` learn on the chip.

The rule (:mod:`neuro.rules.three_factor`, Gerstner et al. 2018; Loihi's learning engine, Davies et al.
2018, IEEE Micro 38(1)): per synapse ``j -> i`` with presynaptic activity ``a_j(t)`` (``x_t`` for ``W_in``,
``z_{t-1}`` for ``W_rec``)::

    pre_j(t)   = sum_k c_k x_kj(t),   x_kj(t) = d_k x_kj(t-1) + a_j(t)     (Loihi x1, x2: impulse 1)
    y_i(t)     = d_y y_i(t-1) + c_y post_i(t)                              (sent by the neuron)
    e_ij(t)    = lambda_e e_ij(t-1) + y_i(t) pre_j(t)                      (tag t, "tag_1")
    ebar_ij(t) = kappa ebar_ij(t-1) + e_ij(t)                              (tag d, "tag_2")
    W_ij      <- W_ij - eta M_i(t) ebar_ij(t)                             (M: the third factor, y2)

*Timing on the chip.* A ``Dense`` delivers a spike one step after it arrives, so when the neuron sends
``y_i(t)`` the synapse's trace already holds ``x(t+1) = d x(t) + a(t+1)``. The tag equation therefore reads
``pre(t) = sum_k c_k (x_k(t+1) - a(t+1)) / d_k`` with ``a(t+1)`` the dependency ``x0``::

    dt = sum_k s_k (u0*x_k*y_k - x0*y_k) - L u0*t       (y_1 := y1, y_2 := y3; s_k = sign c_k; L = 1 - lambda_e)
    dd = u0*t - K u0*d                                   (K = 1 - kappa; absent when kappa = 0)
    dw = u0*y2*d                                         (u0*y2*t when kappa = 0)

so the neuron sends ``y1 = |c_1|/d_1 G y``, ``y3 = |c_2|/d_2 G y`` and ``y2 = G m`` where ``m = -eta M`` arrives on
its third-factor port (``G = exp(1/65535)`` undoes the decay that Lava's floating-point engine applies to
3-factor y traces, ``y*_tau = 65535``). The chip updates ``w, d, t`` from their old values at once, so ``d``
holds ``ebar(t-1)`` and ``dw`` at step ``t`` uses ``ebar(t-2)``: the third factor is fed two steps late
(one when ``kappa = 0``) and the run lasts ``T + 2`` steps (the last ones with no input). This needs
``d_k > 0`` (a trace that remembers one step). Weights change online, from step 3 on.

*Constants.* Loihi's learning strings take constants ``m 2^e`` (``|m| <= 7``, ``-7 <= e <= 8``): only
``L = 1 - lambda_e`` and ``K = 1 - kappa`` go there, rounded by :func:`literal` to the nearest such
number (``LoihiForm.rounding`` reports them); every other constant (``c_k/d_k``, ``eta``) is folded into
the gains of the neuron and of the third factor's synapse, exact in floating point.

*The third factor* ``M`` [T, n] (per neuron: ``B eps_t`` for ``third="error"``) or [T] (one global value, a
reward, through ``Dense(ones((n, 1)))``) is an input of the run, delivered as graded spikes. Not on the chip:
``b`` (no presynaptic spike), the readout (``W_out``, ``b_out``: on the host, as in :mod:`.network`).
:func:`reference` is the same run as a torch loop of Loihi's floating-point equations (the oracle).
:func:`train_on_chip` repeats a sequence: a Lava forward pass gives the error ``M``, a Lava learning run
applies it. Reward-modulated STDP is a second rule with a Loihi form (:mod:`hw_targets.lava.rstdp`); a
``LoihiForm`` may be passed to :func:`export_learning` in place of a rule. Rules that need JVP, JACOBIAN
or GRAPH have none (refused with the reason); LOSS rules run with the chip in the loop
(:mod:`hw_targets.lava.chip_in_the_loop`). Floating point only: Lava's fixed-point ``LearningDense`` is
not bit-exact (its own docstring) and its 7-bit traces would not hold these factors.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import Tensor

from hw_targets.lava._check import check_lava_lif
from neuro.backends import Trace
from neuro.contract import AbstractNetwork, Params

__all__ = ["LavaLearningNetwork", "LoihiForm", "export_learning", "literal", "loihi_form", "reference"]

Y_TAU = 65535  # Loihi3FLearningRule's y*_tau (uint16 max)
G = math.exp(1.0 / Y_TAU)  # undoes the floating-point engine's decay of the y traces, exp(-1/65535)
_POST_KIND = {"triangle": 0, "fast-sigmoid": 1}


def literal(c: float) -> tuple[int, int]:
    """``(m, e)`` with ``m 2^e`` nearest to ``c`` among Loihi's product constants (``-8 <= m <= 7``,
    ``-7 <= e <= 8``); ``(0, 0)`` for 0."""
    if c == 0:
        return 0, 0
    best = None
    for m in sorted((m for m in range(-8, 8) if m), key=abs):  # ties: the smallest |m|
        for e in range(-7, 9):
            err = abs(m * 2.0 ** e - c)
            if best is None or err < best[0]:
                best = (err, m, e)
    return best[1], best[2]


def _lit(m: int, e: int) -> str:
    return f"{m}*2^{e}" if e != 0 else f"{m}"


@dataclasses.dataclass(frozen=True)
class LoihiForm:
    """The rule in Loihi's terms: learning strings, trace time constants, the neuron's gains, the third
    factor's delay, and how the constants were rounded (name -> (wanted, m, e, used))."""

    dw: str
    dd: str | None
    dt: str
    x_taus: tuple[float, ...]
    signs: tuple[int, ...]
    y_gains: tuple[float, ...]  # (y1, y3) gains
    y_decay: float
    y_impulse: float
    post_kind: int
    delay: int
    kappa: float  # the chip's kappa (1 - K as rounded)
    lam: float  # the chip's lambda_e (1 - L as rounded)
    rounding: dict
    x_impulses: tuple[float, ...] = (1.0, 1.0)
    third_sign: float = -1.0  # W <- W + third_sign eta M ebar (-1: descent on a cost; +1: a reward)
    stdp: bool = False  # dt = y0*x1 - x0*y1 - L u0*t (reward-modulated STDP, hw_targets.lava.rstdp)

    def rule(self):
        from lava.magma.core.learning.learning_rule import Loihi3FLearningRule

        kw = dict(x1_impulse=self.x_impulses[0], x1_tau=self.x_taus[0])
        if len(self.x_taus) > 1:
            kw.update(x2_impulse=self.x_impulses[1], x2_tau=self.x_taus[1])
        return Loihi3FLearningRule(dw=self.dw, dd=self.dd, dt=self.dt, t_epoch=1, rng_seed=0, **kw)

    def report(self) -> str:
        rows = [f"  {k}: wanted {w:.6g}, chip {m}*2^{e} = {u:.6g} "
                f"(relative error {abs(u - w) / abs(w) if w else 0:.2e})" for k, (w, m, e, u) in self.rounding.items()]
        return "constants rounded to m*2^e:\n" + ("\n".join(rows) if rows else "  none")


def loihi_form(rule) -> LoihiForm:
    """The Loihi form of ``rule`` (a ``three-factor`` rule on a Lava-exportable ``lif`` network), or a
    ``ValueError`` saying why there is none."""
    from neuro.rules.base import Needs

    name = getattr(rule, "name", repr(rule))
    needs = getattr(rule, "needs", None)
    if needs in (Needs.JVP, Needs.JACOBIAN, Needs.GRAPH):
        raise ValueError(f"rule {name!r} has no Loihi form: it needs {needs.name} (derivatives through the network "
                         "or a stored graph), while Loihi's learning engine sees only each synapse's pre/post traces "
                         "and a third factor")
    if needs == Needs.LOSS:
        raise ValueError(f"rule {name!r} needs only losses, not synaptic traces: it has no learning-engine form; "
                         "train it with the chip in the loop (hw_targets.lava.chip_in_the_loop)")
    if name != "three-factor":
        raise ValueError(f"rule {name!r} has no Loihi export here: only 'three-factor' (whose settings include "
                         "e-prop for LIF) is mapped onto Loihi3FLearningRule")
    check_lava_lif(rule.net)
    if rule.post == "derivative" and rule.net.surrogate not in _POST_KIND:
        raise ValueError(f"surrogate={rule.net.surrogate!r} has no ThreeFactorLIF form: use one of "
                         f"{sorted(_POST_KIND)}")
    for k, d in enumerate(rule.pre_decay):
        if d <= 0:
            raise ValueError(f"pre_decay[{k}]={d!r} cannot be exported: on the chip the synapse's trace is one step "
                             "ahead of the neuron (Dense delay), and e(t) is recovered as (x(t+1) - a(t+1))/d, which "
                             "needs a decay > 0")
    if len(rule.pre_decay) == 2 and rule.pre_impulse[0] < 0:
        raise ValueError(f"pre_impulse={rule.pre_impulse!r}: the first trace's impulse must be >= 0")
    kappa = rule.net.kappa_out
    rounding = {}
    terms = []
    signs = []
    for k, c in enumerate(rule.pre_impulse):
        s = 1 if c >= 0 else -1
        yk = "y1" if k == 0 else "y3"
        terms.append(f"{'+' if s > 0 else '-'} u0*x{k + 1}*{yk} {'-' if s > 0 else '+'} x0*{yk}")
        signs.append(s)
    dt = " ".join(terms).lstrip("+ ")
    lam = rule.eligibility_decay
    m, e = literal(1.0 - lam)
    rounding["1 - eligibility_decay"] = (1.0 - lam, m, e, m * 2.0 ** e)
    dt += f" - {_lit(m, e)}*u0*t" if m > 0 else f" + {_lit(-m, e)}*u0*t"
    lam_chip = 1.0 - m * 2.0 ** e
    if kappa > 0:
        m, e = literal(1.0 - kappa)
        rounding["1 - kappa (readout leak)"] = (1.0 - kappa, m, e, m * 2.0 ** e)
        dd = f"u0*t - {_lit(m, e)}*u0*d"
        dw, delay, kappa_chip = "u0*y2*d", 2, 1.0 - m * 2.0 ** e
    else:
        dd, dw, delay, kappa_chip = None, "u0*y2*t", 1, 0.0
    gains = tuple(abs(c) / d * G for c, d in zip(rule.pre_impulse, rule.pre_decay))
    return LoihiForm(dw=dw, dd=dd, dt=dt, x_taus=tuple(-1.0 / math.log(d) for d in rule.pre_decay),
                     signs=tuple(signs), y_gains=gains, y_decay=rule.post_decay, y_impulse=rule.post_impulse,
                     post_kind=2 if rule.post == "activity" else _POST_KIND[rule.net.surrogate], delay=delay,
                     kappa=kappa_chip, lam=lam_chip, rounding=rounding)


def _third(third_factor: Tensor, T: int, n: int) -> np.ndarray:
    m = third_factor.detach().to("cpu", torch.float64)
    if m.dim() == 1:
        m = m[:, None]
    if m.dim() == 3 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 2 or m.shape[0] != T or m.shape[1] not in (1, n):
        raise ValueError(f"third_factor has shape {tuple(third_factor.shape)}: expected [T={T}, n={n}] (per neuron) "
                         f"or [T={T}] (global)")
    return m.numpy()


def _inputs(net: AbstractNetwork, xs: Tensor) -> np.ndarray:
    if xs.dim() == 3:
        if xs.shape[1] != 1:
            raise ValueError(f"xs has batch {xs.shape[1]}: on-chip learning runs one sequence (batch 1)")
        xs = xs[:, 0]
    if xs.dim() != 2 or xs.shape[-1] != net.n_in:
        raise ValueError(f"xs has shape {tuple(xs.shape)}: expected [T, n_in={net.n_in}]")
    x = xs.detach().to("cpu", torch.float64).numpy()
    if not np.all((x == 0) | (x == 1)):
        raise ValueError("on-chip learning needs spike inputs (0 or 1): the synapse's trace counts spikes")
    return x


class LavaLearningNetwork:
    """A ``lif`` network whose ``W_in``, ``W_rec`` learn on Lava by a ``three-factor`` rule (module docstring)."""

    def __init__(self, net: AbstractNetwork, params: Params, rule, eta: float):
        self.net, self.rule, self.eta = net, rule, float(eta)
        self.form = rule if isinstance(rule, LoihiForm) else loihi_form(rule)
        self.dtype = next(iter(params.values())).dtype
        self.params = {k: v.detach().to("cpu") for k, v in params.items()}

    def run(self, xs: Tensor, third_factor: Tensor) -> tuple[Trace, Params]:
        """Run ``xs`` [T, n_in] (spikes) with the third factor ``M`` [T, n] or [T]; returns the Trace [T, 1, .]
        (``extra``: ``"i"`` the current, ``"post"`` the postsynaptic factor y) and the parameters after the
        run (``W_in``, ``W_rec`` learned; the rest unchanged)."""
        import hw_targets.lava as hl

        hl.ensure_lava()
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.dense.process import Dense, LearningDense
        from lava.proc.io.source import RingBuffer

        from hw_targets.lava.procs.three_factor_lif import ThreeFactorLIF

        net, f, p = self.net, self.form, {k: v.double().numpy() for k, v in self.params.items()}
        x = _inputs(net, xs)
        T, n = x.shape[0], net.n_hidden
        M = _third(third_factor, T, n)
        S = T + f.delay
        data = np.zeros((net.n_in, S))
        data[:, :T - 1] = x[1:].T  # column k (sent at step k+1) holds x_{k+1}; x_0 is preloaded below
        mdata = np.zeros((M.shape[1], S))
        mdata[:, f.delay - 1:f.delay - 1 + T] = M.T  # column k holds M(k - delay + 1)
        src, msrc = RingBuffer(data=data), RingBuffer(data=mdata)
        din = LearningDense(weights=p["W_in"], learning_rule=f.rule(), name="W_in")
        din.a_buff.init = p["W_in"] @ x[0]
        din.x1.init = f.x_impulses[0] * x[0]
        if len(f.x_taus) > 1:
            din.x2.init = f.x_impulses[1] * x[0]
        drec = LearningDense(weights=p["W_rec"], learning_rule=f.rule(), name="W_rec")
        w_m = f.third_sign * self.eta * (np.ones((n, 1)) if M.shape[1] == 1 else np.eye(n))
        dm = Dense(weights=w_m, num_message_bits=24)
        y1g, y3g = f.y_gains[0], (f.y_gains[1] if len(f.y_gains) > 1 else 0.0)
        lif = ThreeFactorLIF(num_steps=S, shape=(n,), du=1.0 - net.beta, dv=1.0 - net.alpha, vth=float(net.v_th),
                             bias_mant=p["b"].copy(), learning_rule=f.rule(), post_kind=f.post_kind,
                             sg_width=net.surrogate_width, sg_scale=net.surrogate_scale, y_decay=f.y_decay,
                             y_impulse=f.y_impulse, y1_gain=y1g, y2_gain=G, y3_gain=y3g)
        src.s_out.connect(din.s_in)
        msrc.s_out.connect(dm.s_in)
        dm.a_out.connect(lif.a_third_factor_in)
        din.a_out.connect(lif.a_in)
        drec.a_out.connect(lif.a_in)
        lif.s_out.connect(drec.s_in)
        for d in (din, drec):
            lif.s_out_bap.connect(d.s_in_bap)
            lif.s_out_y1.connect(d.s_in_y1)
            lif.s_out_y2.connect(d.s_in_y2)
            lif.s_out_y3.connect(d.s_in_y3)
        try:
            lif.run(condition=RunSteps(num_steps=S), run_cfg=Loihi2SimCfg(select_tag="floating_pt"))
            rec = {k: np.asarray(getattr(lif, f"rec_{k}").get(), dtype=np.float64)[:T] for k in ("s", "v", "u", "y")}
            W_in, W_rec = (np.asarray(d.weights.get(), dtype=np.float64) for d in (din, drec))
        finally:
            lif.stop()
        new = dict(self.params)
        new["W_in"] = torch.from_numpy(W_in).to(self.dtype)
        new["W_rec"] = torch.from_numpy(W_rec).to(self.dtype)
        return _trace(net, self.params, rec, self.dtype), new


def _trace(net: AbstractNetwork, params: Params, rec: dict, dtype: torch.dtype) -> Trace:
    to = lambda a: torch.from_numpy(a)[:, None, :].to(dtype)  # noqa: E731
    spikes = to(rec["s"])
    W_out, b_out = params["W_out"].to(dtype), params["b_out"].to(dtype)
    y = torch.zeros(1, net.n_out, dtype=dtype)
    ys = []
    for z in spikes:
        y = net.kappa_out * y + z @ W_out.T + b_out
        ys.append(y)
    return Trace(y=torch.stack(ys), spikes=spikes, v=to(rec["v"]), extra={"i": to(rec["u"]), "post": to(rec["y"])})


def export_learning(net: AbstractNetwork, params: Params, rule, eta: float = 1e-3) -> LavaLearningNetwork:
    """``net`` with its ``W_in``, ``W_rec`` learning on the chip by ``rule`` (a ``three-factor`` rule built on
    ``net``, or its name: default options), learning rate ``eta``. A rule with no Loihi form raises
    ``ValueError`` with the reason."""
    if isinstance(rule, str):
        import neuro

        rule = neuro.rules.make(rule, net)
    if getattr(rule, "net", net) != net:
        raise ValueError(f"the rule was built on {rule.net!r}, not on net={net!r}")
    check_lava_lif(net)
    net.check_params(params)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta={eta!r} is invalid: expected a finite learning rate >= 0")
    return LavaLearningNetwork(net, params, rule, eta)


@torch.no_grad()
def reference(net: AbstractNetwork, params: Params, form: LoihiForm, xs: Tensor, third_factor: Tensor,
              eta: float) -> tuple[Tensor, Params]:
    """The run of :meth:`LavaLearningNetwork.run` as a torch float64 loop of Loihi's floating-point learning
    equations (``LearningConnectionModelFloat``: traces, simultaneous ``w, d, t`` updates, ``d >= 0``, the
    ``exp(-1/65535)`` decay of y traces) and Lava's LIF. Returns the spikes [T, n] and the new parameters."""
    from neuro.surrogate import surrogate_derivative

    x = torch.from_numpy(_inputs(net, xs))
    T, n = x.shape[0], net.n_hidden
    M = torch.from_numpy(_third(third_factor, T, n))
    S = T + form.delay
    p = {k: v.detach().to("cpu", torch.float64).clone() for k, v in params.items()}
    W = {"in": p["W_in"].clone(), "rec": p["W_rec"].clone()}
    K = len(form.x_taus)
    dec = torch.tensor([math.exp(-1.0 / tau) for tau in form.x_taus], dtype=torch.float64)[:, None]
    imp = torch.tensor(form.x_impulses[:K], dtype=torch.float64)[:, None]
    X = {"in": imp * x[0].expand(K, -1), "rec": torch.zeros(K, n, dtype=torch.float64)}
    tag = {k: torch.zeros_like(W[k]) for k in W}
    dtag = {k: torch.zeros_like(W[k]) for k in W}
    a_in, a_rec = p["W_in"] @ x[0], torch.zeros(n, dtype=torch.float64)
    u = v = ytr = torch.zeros(n, dtype=torch.float64)
    du, dv, vth = 1.0 - net.beta, 1.0 - net.alpha, float(net.v_th)
    Lc, Kc = 1.0 - form.lam, 1.0 - form.kappa
    decay_y = math.exp(-1.0 / Y_TAU)
    spikes = []
    for s in range(1, S + 1):
        xs_in = x[s] if s < T else torch.zeros(net.n_in, dtype=torch.float64)  # what the input dense receives
        sent = a_in + a_rec
        a_in = W["in"] @ xs_in
        u = u * (1 - du) + sent
        vt = v * (1 - dv) + u + p["b"]
        z = (vt > vth).to(torch.float64)
        if form.post_kind == 2:
            post = z
        else:
            post = surrogate_derivative(vt, vth, net.surrogate, net.surrogate_width, net.surrogate_scale)
        ytr = form.y_decay * ytr + form.y_impulse * post
        v = torch.where(z > 0, torch.zeros_like(vt), vt)
        spikes.append(z)
        k = s - 2 - form.delay + 1  # the third factor's column arriving now is M(k)
        m = M[k] if 0 <= k < T else torch.zeros(M.shape[1], dtype=torch.float64)
        m = form.third_sign * eta * m
        m = m.expand(n) if M.shape[1] == 1 else m
        ys = [g * ytr * decay_y for g in form.y_gains]
        y2 = G * m * decay_y
        a_rec = W["rec"] @ z
        for key, pre in (("in", xs_in), ("rec", z)):
            X[key] = dec * X[key] + imp * pre
            if form.stdp:  # y0*x1 - x0*y1: traces at this step's post / pre spikes
                dt = z[:, None] * X[key][0][None, :] - ys[0][:, None] * pre[None, :] - Lc * tag[key]
            else:
                dt = sum(form.signs[j] * ys[j][:, None] * (X[key][j] - pre)[None, :] for j in range(K)) - Lc * tag[key]
            if form.dd is not None:
                dw = y2[:, None] * dtag[key]
                dd = tag[key] - Kc * dtag[key]
                dtag[key] = (dtag[key] + dd).clamp_min(0.0)
            else:
                dw = y2[:, None] * tag[key]
            W[key] = W[key] + dw
            tag[key] = tag[key] + dt
    new = {k: v.clone() for k, v in params.items()}
    new["W_in"], new["W_rec"] = W["in"].to(params["W_in"].dtype), W["rec"].to(params["W_rec"].dtype)
    return torch.stack(spikes[:T]), new


def third_factor_error(net: AbstractNetwork, params: Params, trace: Trace, ys: Tensor, mask: Tensor | None = None,
                       feedback: Tensor | None = None) -> Tensor:
    """The ``three-factor`` rule's ``third="error"`` signal of a run: ``M_t = eps_t B^T`` [T, n] with ``eps_t =
    (y_t - y*_t) mask_t`` (``mse``, batch 1) and ``B = W_out^T`` (``feedback=None``) or a given [n, n_out]."""
    ys = ys.reshape(trace.y.shape).to(trace.y.dtype)
    eps = trace.y - ys
    if mask is not None:
        eps = eps * mask.reshape(*trace.y.shape[:2], 1).to(eps.dtype)
    B = params["W_out"].T if feedback is None else feedback
    return (eps @ B.T.to(eps.dtype))[:, 0]


def train_on_chip(net: AbstractNetwork, params: Params, rule, xs: Tensor, ys: Tensor, trials: int, eta: float,
                  mask: Tensor | None = None) -> tuple[Params, list[float]]:
    """``trials`` repetitions of one sequence: a Lava floating-point forward pass (:func:`hw_targets.lava.export`)
    gives the loss and the error signal ``M`` (:func:`third_factor_error`), then a Lava learning run
    updates ``W_in``, ``W_rec`` on the chip. Returns the parameters and the loss before each trial and
    after the last (``mse``, summed over time)."""
    from hw_targets.lava.network import export

    losses = []
    for k in range(trials + 1):
        tr = export(net, params).run(xs if xs.dim() == 3 else xs[:, None])
        eps = tr.y - ys.reshape(tr.y.shape).to(tr.y.dtype)
        if mask is not None:
            eps = eps * mask.reshape(*tr.y.shape[:2], 1).to(eps.dtype)
        losses.append(float(0.5 * (eps ** 2).sum()))
        if k == trials:
            break
        M = third_factor_error(net, params, tr, ys, mask)
        _, params = export_learning(net, params, rule, eta).run(xs, M)
    return params, losses
