"""UORO on the leaky tanh rate RNN (:mod:`models.rate`) without Jacobian-vector products: a fast path of
:class:`neuro.rules.uoro.UORO` (Tallec & Ollivier 2017, Algorithm 1). Same estimate as the definition (same
random signs, drawn in the same order), summed over a sequence; only the time at which it is handed over
differs (at window ends, ``flush`` and ``finish``).

The rate step (``f'_t = 1 - tanh(i_t)^2``, ``z_t = [x_t; h_{t-1}; 1]`` [m = n_in + n + 1])::

    i_t = W_in x_t + W_rec h_{t-1} + b,   h_t = (1 - alpha) h_{t-1} + alpha tanh(i_t),   y_t = W_out h_t + b_out

has ``(partial F/partial s) v = (1 - alpha) v + alpha f'_t * (W_rec v)`` (one matrix-vector product), and
``nu^T partial F/partial theta`` is rank one: ``a_t z_t^T`` on the blocks ``[W_in | W_rec | b]`` (zero on
``W_out, b_out``) with ``a_t = alpha nu_t * f'_t``, so ``||delta_t|| = ||a_t|| ||z_t||``. Hence ``theta~``
(kept per pair as an n x m matrix ``Theta``) stays "a scaled matrix plus rank-one terms". With ``e_t =
dl_t/dy_t`` and ``r_t = W_out^T e_t``: ``dl_t/ds_{t-1} . s~_{t-1} = r_t . (J s~_{t-1})`` and the direct term
of the estimate is ``q_t z_t^T`` with ``q_t = alpha f'_t * r_t`` (plus ``e_t h_t^T``, ``e_t`` on the readout).

Each step runs the network and writes ``x_t, y*_t, h_{t-1}, tanh(i_t), y_t`` and the mask to a row of the
window (:class:`RateUOROState` ``rows``). After ``window`` steps (or at ``flush`` / ``finish``) the L held
steps are folded in. All signs ``nu`` are drawn at once (the numbers that L one-step draws give); with
``Theta`` the pair's matrix at the window start (``c = 1``, or 0 when ``Theta = 0``), per pair:

    U_s = a_s^T Theta z_s                   one matrix product [L, n] x [n, m]
    H_sr = (a_s . a_r)(z_s . z_r)           Gram matrices [L, L];  ||delta_s|| = sqrt(H_ss)
    rho_1,s = sqrt(||delta_s|| / (sqrt(n) + eps)) + eps
    for s = 1..L (the sequential part, :mod:`neuro.rules._fast.uoro_sequence`; scalars in float64):
        Js_s = (partial F/partial s) s~_{s-1},      rho_0,s = sqrt(||theta~_{s-1}|| / (||Js_s|| + eps)) + eps
        theta~_{s-1} = D_{s-1} (c Theta + sum_{r<s} w_r a_r z_r^T),   D_s = D_{s-1} / rho_0,s,  D_0 = 1
        ||theta~_s||^2 = ||theta~_{s-1}||^2 / rho_0^2 + 2 D_{s-1} X_s / (rho_0 rho_1) + ||delta_s||^2 / rho_1^2
            X_s = a_s^T theta~_{s-1} z_s / D_{s-1} = c U_s + sum_{r<s} w_r H_sr,    w_s = 1 / (rho_1,s D_s)
        s~_s = rho_0,s Js_s + rho_1,s nu_s
    k_s = r_s . Js_s   (= dl_s/ds_{s-1} . s~_{s-1})
    sum_s k_s theta~_{s-1} = gamma Theta + sum_r v_r a_r z_r^T,
        gamma = c sum_s k_s D_{s-1},   v_r = w_r sum_{s>r} k_s D_{s-1}
    Theta <- c D_L Theta + sum_r D_L w_r a_r z_r^T                        one matrix product

and the window's estimate, the mean over the pairs (and the batch), is ``gamma Theta + sum_r (v_r a_r +
q_r) z_r^T`` on ``[W_in | W_rec | b]`` (one matrix product) and ``sum_s e_s h_s^T``, ``sum_s e_s`` on the
readout. ``D`` restarts at 1 where ``theta~`` is exactly 0 (a saturated network), so it stays bounded.
``||Theta||^2`` is recomputed at each window end.

*In flight* (one pair: batch 1, ``samples = 1``, on the CPU, ``window > 1``). The sequential part needs a
product with ``W_rec`` per step, as the network does, and at ``n = 1024`` each is bound by reading
``W_rec``. So when a window is full its factors are computed (:func:`_prepare`: the signs, ``U``, ``H``)
and its sequential part runs one step at a time during the next window's steps (:class:`Flight`), each
fused with the network's ``W_rec h_{t-1}`` in one pass over ``W_rec``. At the end of that next window it
lands (:func:`_complete`: the estimate and ``Theta`` at its end; ``Theta``'s shares are added to the two
matrix products in one pass that also gives ``||Theta||^2``) and the next one takes off. So a window end
hands over the estimate of the window before it; ``flush`` and ``finish`` run what is left (the rest of
the flight, then the held steps) and hand over everything.

*State.* A :class:`RateUOROState` holds tensors, numbers and the generator only, so it checkpoints
(:func:`neuro.io.save_checkpoint`) at any step, a window in flight included. A step leaves the state it
started from as it was: it writes the next free row of the window's buffer, and where that row was
written already (the same state stepped twice) it first copies the held rows to a new buffer; a flight's
step writes new arrays.

Cost per step: the forward step (in flight its product with ``W_rec`` is shared with the sequential
part's; otherwise one more product with ``W_rec``) and three rank-one-equivalent shares of [n, L] x [L, m]
matrix products (``U``, ``Theta``, the estimate); memory O(B (n m + L n)) (two windows in flight).
``window = 1`` hands the estimate over every step (as :mod:`neuro.rules.td` needs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.functional import linear as _linear

from models.rate import RateRNN, RateState
from neuro.contract import Params, check_positive
from neuro.rules import _matvec
from neuro.rules._common import new_generator
from neuro.rules.base import FastPath, StepOutput
from neuro.rules.uoro import UORO

from . import uoro_sequence as _seq
from . import uoro_window as _win

__all__ = ["Flight", "RateUORO", "RateUOROState", "build"]

_LOSSES = ("mse", "ce", "value")
_ROUTED = ("init", "step", "flush", "finish")


class Flight(NamedTuple):
    """A window whose sequential part is under way (``active``): its factors, the steps done ``j``, ``s~`` after
    them ``s_tilde`` [n] and the scalars ``acc`` (float64 [3 + 3 L], layout in :func:`uoro_sequence.seq_step`).
    Inactive: no window is in flight (the arrays, of the same shapes, are not read), so that a state has one
    structure at every step."""

    factors: _win.Factors
    j: int
    s_tilde: Tensor
    acc: Tensor
    active: bool


class RateUOROState(NamedTuple):
    net: NamedTuple  # RateState: h_t [B, n]
    s_tilde: Tensor  # [B K, n]  s~ after the last folded step
    theta_mat: Tensor  # [B K, n, n_in + n + 1]  theta~ after the last folded step, blocks [W_in | W_rec | b]
    theta_sq: Tensor  # [B K]  ||theta~||^2 (float64)
    rows: Tensor  # [window, B, n_in + 2 n_out + 2 n + 1]  the held steps: x_t, y*_t, h_{t-1}, tanh(i_t), y_t, mask
    written: Tensor  # int64 [1]: rows of ``rows`` written so far (shared by the states that share ``rows``)
    held: int  # steps held back (the first ``held`` rows)
    gen: torch.Generator
    t: int  # steps since init or reset (folded, in flight or held)
    flight: Flight | None  # the previous window, its sequential part under way (one pair on the CPU; else None)


def build(rule: UORO) -> "RateUORO | None":
    """The fast path for ``rule`` on exactly the rate RNN with a loss it writes out; None for another network,
    loss, or a subclass that changes the rule's steps."""
    if type(rule.net) is not RateRNN or (rule.loss or "mse") not in _LOSSES:
        return None
    if not all(getattr(type(rule), name) is getattr(UORO, name) for name in _ROUTED):
        return None
    return RateUORO(rule)


class RateUORO(FastPath):
    """UORO on the rate RNN (module docstring)."""

    rule: UORO

    def __init__(self, rule: UORO) -> None:
        super().__init__(rule)
        self._views = _Views()

    def init(self, params: Params, batch: int = 1, seed: int = 0) -> RateUOROState:
        check_positive("batch", batch, integer=True)
        net, K = self.rule.net, self.rule.samples
        p = params["W_rec"]
        n, m = net.n_hidden, net.n_in + net.n_hidden + 1
        zeros = lambda *shape, dtype=p.dtype: torch.zeros(*shape, dtype=dtype, device=p.device)  # noqa: E731
        h = net.init_state(params, batch)
        flight = None
        if self.rule.window > 1 and _kernel_applies(self.rule, p, h.h):  # windows will fly: an idle flight
            L = self.rule.window
            flight = Flight(_win.idle_factors(n, m, net.n_out, L, p.dtype), L, zeros(n),
                            zeros(3 + 3 * L, dtype=torch.float64), False)
        return RateUOROState(net=h, s_tilde=zeros(batch * K, n), theta_mat=zeros(batch * K, n, m),
                             theta_sq=zeros(batch * K, dtype=torch.float64),
                             rows=zeros(self.rule.window, batch, _width(net)), written=_counter(0), held=0,
                             gen=new_generator(seed), t=0, flight=flight)

    def step(self, params: Params, state: RateUOROState, x: Tensor, y: Tensor, mask: Tensor) -> StepOutput:
        """One network step, held back (its window is folded in once ``window`` steps are held). In flight: one
        step of the previous window's sequential part, fused with this step's recurrent product."""
        rule = self.rule
        with torch.no_grad():
            alpha = rule.net.alpha
            h, W_rec, fl = state.net.h, params["W_rec"], state.flight
            i = _linear(x, params["W_in"], params["b"])
            if fl is not None and fl.active:
                fl, Wh = _advance(W_rec, fl, h, self._views)
                i.add_(Wh)
            else:
                i.addmm_(h, W_rec.t())
            th = i.tanh_()
            h_new = th if alpha == 1.0 else torch.add(h * (1.0 - alpha), th, alpha=alpha)
            y_hat = _linear(h_new, params["W_out"], params["b_out"])
            m = float(mask) if mask.shape[0] == 1 and mask.device.type == "cpu" else None
            loss = _loss(rule.loss or "mse", y_hat, y, mask, m)
            rows, written = _hold(rule, state, (x, y, h, th, y_hat, _mask_column(self._views, mask, m, th)),
                                  self._views)
            new = RateUOROState(RateState(h_new), state.s_tilde, state.theta_mat, state.theta_sq, rows, written,
                                state.held + 1, state.gen, state.t + 1, fl)
            grad = None
            if new.held >= rule.window:
                if fl is not None and _kernel_applies(rule, W_rec, h_new):
                    new, grad = _close_window(rule, params, new)
                else:
                    new, grad = _fold(rule, params, new, True)
        return StepOutput(new, y_hat, loss, grad)

    def flush(self, params: Params, state: RateUOROState) -> tuple[RateUOROState, Params | None]:
        """The estimate of the steps not yet handed over (the flight's, then the held steps')."""
        return fold(self.rule, params, state)

    def finish(self, params: Params, state: RateUOROState) -> tuple[RateUOROState, Params | None]:
        return fold(self.rule, params, state)

    def pair(self, params: Params, state: RateUOROState) -> tuple[Tensor, Tensor]:
        """``(s~ [B K, n], theta~ [B K, P])`` after every step so far, theta~ flattened like the definition's
        (sorted keys; zero on the readout). Folds a copy: the state and its generator are left as they were."""
        params = {k: v.detach() for k, v in params.items()}
        gen = torch.Generator(device=state.gen.device)
        gen.set_state(state.gen.get_state())
        st, _ = fold(self.rule, params, state._replace(gen=gen), check=False)
        n_in, n = self.rule.net.n_in, self.rule.net.n_hidden
        Th = st.theta_mat
        BK = Th.shape[0]
        parts = {"W_in": Th[:, :, :n_in], "W_rec": Th[:, :, n_in:n_in + n], "b": Th[:, :, -1]}
        flat = [parts[k].reshape(BK, -1) if k in parts else Th.new_zeros(BK, params[k].numel()) for k in sorted(params)]
        return st.s_tilde, torch.cat(flat, 1)


def _width(net) -> int:
    """The numbers of one held step: ``x_t, y*_t, h_{t-1}, tanh(i_t), y_t``, the mask."""
    return net.n_in + net.n_out + 2 * net.n_hidden + net.n_out + 1


def _counter(value: int) -> Tensor:
    """The written-rows counter of a window's buffer (on the CPU: it is read every step)."""
    return torch.full((1,), value, dtype=torch.int64)


def _hold(rule: UORO, state: RateUOROState, parts: tuple, views: _Views) -> tuple[Tensor, Tensor]:
    """The window's rows with this step's ``parts`` written to row ``held`` (cast to the rows' dtype): a new buffer at
    a window's first step, or where that row was written already by another step from ``state``; then the
    counter (read and written through its cached array where there is one)."""
    j, rows, written = state.held, state.rows, state.written
    wv = views.counter
    cnt = wv[1] if wv is not None and wv[0] is written else None
    if j == 0 or (int(written) if cnt is None else int(cnt[0])) != j:
        fresh = torch.zeros(rule.window, *rows.shape[1:], dtype=rows.dtype, device=rows.device)
        fresh[:j] = rows[:j]
        rows, written = fresh, _counter(j)
        cnt = written.numpy()
        views.counter = (written, cnt)
    torch.cat(parts, 1, out=rows[j])
    if cnt is None:
        written.fill_(j + 1)
    else:
        cnt[0] = j + 1
    return rows, written


def _mask_column(views: _Views, mask: Tensor, m: float | None, like: Tensor) -> Tensor:
    """``mask`` [B] as a column [B, 1] of ``like``'s dtype; for one sample of value ``m`` a kept constant."""
    if m is None:
        return mask[:, None].to(like.dtype)
    col = views.column
    if col is None or col[0] != m or col[1].dtype != like.dtype:
        col = (m, torch.full((1, 1), m, dtype=like.dtype))
        views.column = col
    return col[1]


def _loss(loss: str, y_hat: Tensor, y: Tensor, mask: Tensor, m: float | None = None) -> Tensor:
    """``mean_b m_b l_b`` for the per-sample loss ``l`` of :mod:`neuro.losses` (the step's reported loss); ``m``:
    ``float(mask)`` where already read."""
    B = y_hat.shape[0]
    if loss == "mse":
        if B == 1:
            return (y_hat - y).square_().sum().mul_(0.5 * (float(mask) if m is None else m))
        d = y_hat - y
        return torch.dot(torch.linalg.vecdot(d, d), mask.to(d.dtype)).mul_(0.5 / B)
    if loss == "ce":
        return torch.dot((y * torch.log_softmax(y_hat, dim=-1)).sum(-1), mask.to(y_hat.dtype)).mul_(-1.0 / B)
    return torch.dot(y_hat.sum(-1), mask.to(y_hat.dtype)).mul_(1.0 / B)  # "value"


def fold(rule: UORO, params: Params, state: RateUOROState, check: bool = True) -> tuple[RateUOROState, Params | None]:
    """Fold everything not yet handed over into the pair (the flight's remaining steps, then the held steps);
    their summed estimate (``None`` when there is nothing)."""
    fl = state.flight
    flying = fl is not None and fl.active
    if not state.held and not flying:
        return state, None
    grads = []
    with torch.no_grad():
        if flying:
            fl = _run_rest(params["W_rec"], fl)
            state, g = _land(rule, params, state._replace(flight=fl._replace(active=False)), fl, check)
            grads.append(g)
        if state.held:
            state, g = _fold(rule, params, state, check)
            grads.append(g)
    if len(grads) == 2:
        return state, {k: grads[0][k] + grads[1][k] for k in grads[0]}
    return state, grads[0]


def _kernel_applies(rule: UORO, W_rec: Tensor, h: Tensor) -> bool:
    """Whether the sequential part runs in the compiled kernel: one pair (batch 1, one sample), on the CPU."""
    return h.shape[0] == 1 and rule.samples == 1 and _matvec.usable(W_rec, h)


def _close_window(rule: UORO, params: Params, state: RateUOROState) -> tuple[RateUOROState, Params | None]:
    """A full window with one pair on the CPU: the flight in progress (the previous window, its sequence done
    by this window's steps) lands (its estimate is handed over), and this window takes off."""
    grad, fl = None, state.flight
    if fl.active:
        if fl.j != fl.factors.L:
            raise RuntimeError(f"{rule.name}: a window closed with {fl.factors.L - fl.j} steps of the previous one "
                               "still to run (the state was stepped by a rule with another window)")
        state, grad = _land(rule, params, state, fl, True)
    factors = _win.prepare(rule, params, state, kernel=True)
    return state._replace(held=0, flight=_take_off(factors, state)), grad


def _take_off(factors: _win.Factors, state: RateUOROState) -> Flight:
    """The flight of a prepared window (one pair), no step of its sequence run yet."""
    acc = torch.zeros(3 + 3 * factors.L, dtype=torch.float64)
    acc[0], acc[1] = factors.q[0], 1.0  # ||theta~||^2 at the window's start, D_0 = 1
    return Flight(factors, 0, state.s_tilde[0], acc, True)


def _run_rest(W_rec: Tensor, fl: Flight) -> Flight:
    """The flight with the rest of its sequence run (no network step to share the products with)."""
    views = _Views()
    while fl.j < fl.factors.L:
        fl, _ = _advance(W_rec, fl, None, views)
    return fl


class _Views:
    """numpy views of tensors that the steps pass to the kernel again and again (``W_rec``, the window's factors,
    the previous step's ``s~`` and scalars, the window's row counter), each kept with the tensor it views and used
    only while that tensor is the one passed (and its storage has not moved); and the mask column of the last
    value of a one-sample mask. Not part of any state: a state loaded from a checkpoint finds none and its
    tensors are converted."""

    __slots__ = ("w", "kernel", "out", "counter", "column")

    def __init__(self) -> None:
        self.w = self.kernel = self.out = self.counter = self.column = None


def _array(cached, t: Tensor):
    """``t.numpy()``, from ``cached = (tensor, data_ptr, array)`` where it views ``t``."""
    if cached is not None and cached[0] is t and cached[1] == t.data_ptr():
        return cached[2]
    return None


def _advance(W_rec: Tensor, fl: Flight, h: Tensor | None, views: _Views) -> tuple[Flight, Tensor | None]:
    """One step of the flight's sequence (:func:`uoro_sequence.seq_step`); with ``h`` [1, n] also ``W_rec h`` [n]
    from the same pass over ``W_rec``. The arrays come from ``views`` where it holds them (and go into it)."""
    Wn = _array(views.w, W_rec)
    if Wn is None:
        Wn = W_rec.detach().numpy()
        views.w = (W_rec, W_rec.data_ptr(), Wn)
    FNR, S64 = fl.factors.kernel
    kv = views.kernel
    if kv is not None and kv[0] is FNR and kv[1] is S64 and kv[2] == FNR.data_ptr() and kv[3] == S64.data_ptr():
        Fn, Sn = kv[4], kv[5]
    else:
        Fn, Sn = FNR.numpy(), S64.numpy()
        views.kernel = (FNR, S64, FNR.data_ptr(), S64.data_ptr(), Fn, Sn)
    ov = views.out
    if ov is not None and ov[0] is fl.s_tilde and ov[1] is fl.acc:
        sv, av = ov[2], ov[3]
    else:
        sv, av = fl.s_tilde.numpy(), fl.acc.numpy()
    s_new, Wh, acc = torch.empty_like(fl.s_tilde), torch.empty_like(fl.s_tilde), torch.empty_like(fl.acc)
    s_np, acc_np = s_new.numpy(), acc.numpy()
    _seq.seq_step(Wn, h.numpy()[0] if h is not None else sv, sv, Fn, Sn, av, acc_np, Wh.numpy(), s_np,
                  fl.j)  # without h: W s~ twice
    views.out = (s_new, acc, s_np, acc_np)
    return Flight(fl.factors, fl.j + 1, s_new, acc, True), (Wh if h is not None else None)


def _land(rule: UORO, params: Params, state: RateUOROState, fl: Flight, check: bool):
    """The estimate of a flight whose sequence is done, and the pair at its end (``state.flight`` is left as it
    is)."""
    L, acc = fl.factors.L, fl.acc
    kap, w = acc[3 + 2 * L:].clone()[None], acc[3:3 + L].clone()[None]
    return _win.complete(rule, params, state, fl.factors, fl.s_tilde[None], kap, [float(acc[1])], w, check)


def _fold(rule: UORO, params: Params, state: RateUOROState, check: bool):
    """Fold the held steps into the pair at once: prepare, the whole sequential part, complete."""
    kernel = _kernel_applies(rule, params["W_rec"], state.net.h)
    p = _win.prepare(rule, params, state, kernel=kernel)
    state = state._replace(held=0)
    if kernel:
        fl = _run_rest(params["W_rec"], _take_off(p, state))
        return _land(rule, params, state, fl, check)
    L, BK = p.L, p.Fp.shape[1]
    s_t, JS, D, w, Dprev = _seq.sequence(state.s_tilde, params["W_rec"].t(), p.Fp, p.NU1, rule.net.alpha, rule.eps,
                                         list(p.q), p.c, p.U.tolist(), p.H.tolist(), p.rho1.t().tolist(),
                                         p.nd.t().tolist())
    Dp = torch.tensor(Dprev, dtype=torch.float64).reshape(L, BK)  # D_{s-1}
    R = p.R.repeat_interleave(rule.samples, 1) if rule.samples > 1 else p.R
    kap = (torch.linalg.vecdot(R, torch.stack(JS)).double().cpu() * Dp).t()  # k_s D_{s-1}
    return _win.complete(rule, params, state, p, s_t, kap, D, torch.tensor(w, dtype=torch.float64), check)
