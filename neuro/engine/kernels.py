"""The compiled pieces every engine shares (numba, ``cache=True``; module-level functions over arrays and
scalars, so the on-disk cache holds them): the rate neuron's step, the per-step losses and their errors, and
the optimizers ``torch.optim.SGD`` / ``Adam`` / ``RMSprop`` with torch's own arithmetic (its formulas, in its
order of operations; torch's vectorised CPU kernels fuse some multiply-adds and compute ``sqrt`` to within an
ulp, so the last bit of an element may differ).
An online kernel may fuse one parameter's update into its pass over that parameter's rows
(:func:`row_update_begin`, then :func:`row_update` as each row's sum is complete, the same arithmetic as the
whole update) and update the others at the step's end (:func:`scheduled_update`).

Scalars that torch applies in the tensors' dtype (``alpha``, ``lr``, Adam's ``1 - beta1``, ...) are cast to
the arrays' dtype first (:func:`cast`), so that a float32 run computes in float32 as torch does. The arrays a
function changes are changed in place.
"""

from __future__ import annotations

import numpy as np

from neuro._numba import numba

__all__ = ["ADAM", "CE", "MSE", "RMSPROP", "SGD", "adam", "adam_span", "adam_step", "apply_update", "apply_update_rest",
           "cast", "dot", "loss_and_error", "lr_of", "rate_step", "readout", "rmsprop", "rmsprop_span", "rmsprop_step",
           "row_update", "row_update_begin", "scheduled_update", "sgd", "sgd_span", "sum_squares", "td_error", "update_due"]

SGD, ADAM, RMSPROP = 0, 1, 2  # optimizer codes (apply_update)
MSE, CE = 0, 1  # loss codes (loss_and_error)


def cast(x, like):  # noqa: ANN001, ANN201
    """The float ``x`` in the dtype of the array ``like`` (or of the scalar ``like``): a conversion, compiled
    inline (no array is made, so a kernel may cast in its inner loops)."""
    return np.asarray(like).dtype.type(x)


@numba.extending.overload(cast)
def _cast(x, like):  # noqa: ANN001, ANN202
    to = numba.np.numpy_support.as_dtype(like.dtype if isinstance(like, numba.types.Array) else like).type

    def impl(x, like):  # noqa: ANN001, ANN202
        return to(x)
    return impl


@numba.njit(cache=True, fastmath={"reassoc"})
def dot(a, b):  # noqa: ANN001, ANN201
    """``sum_j a_j b_j`` of two contiguous 1-D arrays of one dtype, summed in whatever order vectorizes (the
    partial sums in SIMD lanes; ``reassoc`` only, so NaN and inf propagate as in any order): a matrix product's
    row, as BLAS sums it in an order of its own."""
    s = cast(0.0, a)
    for j in range(a.size):
        s += a[j] * b[j]
    return s


@numba.njit(cache=True, fastmath={"reassoc"})
def sum_squares(v):  # noqa: ANN001, ANN201
    """``sum_j v_j^2`` of a contiguous 1-D array, in float64, summed in whatever order vectorizes (``reassoc``
    only, as :func:`dot`): a separate loop, so that the loops writing ``v`` vectorize too."""
    s = 0.0
    for j in range(v.size):
        x = np.float64(v[j])
        s += x * x
    return s


@numba.njit(cache=True)
def rate_step(W_in, W_rec, b, alpha, x, h, h_new, D):  # noqa: ANN001, ANN201
    """One step of the leaky tanh rate RNN (:mod:`models.rate`) for a batch, as its ``current``, ``neuron`` and
    ``neuron_derivatives`` state it::

        u = W_in x + W_rec h + b        h_new = (1 - alpha) h + alpha tanh(u)      (alpha = 1: tanh(u))
        D = dh_new/du = alpha (1 - tanh(u)^2)

    ``x`` [B, n_in], ``h`` [B, n] (read), ``h_new``, ``D`` [B, n] (written)."""
    nb, n = h.shape
    a = cast(alpha, h)
    leak = cast(1.0 - alpha, h)
    one = cast(1.0, h)
    for s in range(nb):
        for i in range(n):
            th = np.tanh(dot(x[s], W_in[i]) + dot(h[s], W_rec[i]) + b[i])
            if alpha == 1.0:
                h_new[s, i] = th
                D[s, i] = one - th * th
            else:
                h_new[s, i] = leak * h[s, i] + a * th
                D[s, i] = (one - th * th) * a


@numba.njit(cache=True)
def readout(W_out, b_out, h, y_hat):  # noqa: ANN001, ANN201
    """The linear readout ``y_hat = W_out h + b_out``: ``h`` [B, n] -> ``y_hat`` [B, n_out] (written)."""
    nb, n = h.shape
    for s in range(nb):
        for k in range(W_out.shape[0]):
            y_hat[s, k] = dot(h[s], W_out[k]) + b_out[k]


@numba.njit(cache=True)
def loss_and_error(kind, y_hat, y, mask, eps):  # noqa: ANN001, ANN201
    """The per-step loss of :mod:`neuro.losses` (returned) and its error ``d loss / d y_hat`` (``eps`` [B, n_out],
    written): masked per sample and divided by the batch size ``B``.

    ``MSE``: ``loss = sum_s m_s 1/2 sum_k (y_hat - y)^2 / B``, ``eps = (y_hat - y) m_s / B``;
    ``CE``: ``loss = -sum_s m_s sum_k y_k log softmax(y_hat)_k / B``, ``eps = (softmax(y_hat) sum_k y_k - y) m_s / B``.
    ``mask`` [B] in the arrays' dtype (1 where the step counts)."""
    nb, n_out = y_hat.shape
    fb = cast(nb, y_hat)
    half = cast(0.5, y_hat)
    total = cast(0.0, y_hat)
    for s in range(nb):
        m = mask[s] / fb
        ls = cast(0.0, y_hat)
        if kind == MSE:
            for k in range(n_out):
                e = y_hat[s, k] - y[s, k]
                ls += e * e
                eps[s, k] = e * m
            ls = half * ls
        else:
            top = y_hat[s, 0]
            for k in range(1, n_out):
                top = max(top, y_hat[s, k])
            z = cast(0.0, y_hat)
            for k in range(n_out):
                z += np.exp(y_hat[s, k] - top)
            logz = np.log(z)
            ysum = cast(0.0, y_hat)
            for k in range(n_out):
                ysum += y[s, k]
                ls += y[s, k] * (y_hat[s, k] - top - logz)
            ls = -ls
            for k in range(n_out):
                eps[s, k] = (np.exp(y_hat[s, k] - top) / z * ysum - y[s, k]) * m
        total += ls * mask[s]
    return total / fb


@numba.njit(cache=True, error_model="numpy")
def sgd(ps, gs, lr):  # noqa: ANN001, ANN201
    """``torch.optim.SGD`` without momentum or weight decay: ``p <- p + (-lr) g`` for each pair of flat arrays."""
    for i in range(len(ps)):
        sgd_span(ps[i], gs[i], cast(-lr, ps[i]))


@numba.njit(cache=True, error_model="numpy")
def sgd_span(p, g, step):  # noqa: ANN001, ANN201
    """SGD's update (:func:`sgd`) of the elements of ``p`` (any span of a parameter) with the gradient ``g`` and
    ``step = -lr`` in the arrays' dtype: ``p <- p + step g``."""
    for j in range(p.size):
        _sgd_at(p, g, j, step)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _sgd_at(p, g, j, step):  # noqa: ANN001, ANN202
    """Element ``j`` of :func:`sgd_span`."""
    p[j] = p[j] + step * g[j]


@numba.njit(cache=True, error_model="numpy")
def adam(ps, gs, ms, vs, steps, lr, beta1, beta2, eps):  # noqa: ANN001, ANN201
    """``torch.optim.Adam`` (no weight decay, amsgrad or maximize) as ``_single_tensor_adam`` computes it, for
    each parameter ``p`` with gradient ``g``, moments ``m`` (``exp_avg``), ``v`` (``exp_avg_sq``) and its step
    count (a one-element array, ``state["step"]``)::

        step += 1;   m <- m.lerp(g, 1 - beta1);   v <- v beta2 + (1 - beta2) g g
        bc1 = 1 - beta1^step;   bc2 = 1 - beta2^step          (in double precision, as Python floats)
        p <- p + (-lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)

    ``lerp(a, b, w) = a + w (b - a)`` for ``w < 0.5``, else ``b - (b - a)(1 - w)`` (torch's formula)."""
    for i in range(len(ps)):
        adam_span(ps[i], gs[i], ms[i], vs[i], adam_step(steps[i], lr, beta1, beta2, eps, ps[i]))


@numba.njit(cache=True)
def adam_step(st, lr, beta1, beta2, eps, like):  # noqa: ANN001, ANN201
    """One parameter's Adam step begun: its count ``st`` (a one-element array) incremented, and the step's
    scalars for :func:`adam_span` (in the dtype of ``like``; ``w = 1 - beta1`` as float64 for lerp's branch)."""
    st[0] += 1
    step = float(st[0])
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    w = 1.0 - beta1
    return (w, cast(w, like), cast(1.0 - w, like), cast(beta2, like), cast(1.0 - beta2, like),
            cast(bc2 ** 0.5, like), cast(eps, like), cast(-(lr / bc1), like))


@numba.njit(cache=True, error_model="numpy")
def adam_span(p, g, m, v, c):  # noqa: ANN001, ANN201
    """Adam's update (:func:`adam`) of the elements of ``p``, ``m``, ``v`` (any span of a parameter: the whole,
    a row) with the gradient ``g``, the step's scalars ``c`` from :func:`adam_step`."""
    if c[0] < 0.5:  # the branch outside the loops, each of which vectorizes
        for j in range(p.size):
            _adam_at(p, g, m, v, j, c, True)
    else:
        for j in range(p.size):
            _adam_at(p, g, m, v, j, c, False)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _adam_at(p, g, m, v, j, c, small):  # noqa: ANN001, ANN202
    """Element ``j`` of :func:`adam_span` (``small``: lerp's weight ``w < 0.5``)."""
    w, wd, wc, b2, c2, root, e, step_size = c
    gj = g[j]
    mj = m[j] + wd * (gj - m[j]) if small else gj - (gj - m[j]) * wc
    vj = v[j] * b2 + c2 * gj * gj
    m[j], v[j] = mj, vj
    p[j] = p[j] + step_size * (mj / (np.sqrt(vj) / root + e))


@numba.njit(cache=True, error_model="numpy")
def rmsprop(ps, gs, sqs, steps, lr, alpha, eps):  # noqa: ANN001, ANN201
    """``torch.optim.RMSprop`` (no momentum, centering, weight decay or maximize) as ``_single_tensor_rmsprop``
    computes it, for each parameter ``p`` with gradient ``g``, its ``square_avg`` ``s`` and step count (a
    one-element array, ``state["step"]``)::

        step += 1;   s <- s alpha + (1 - alpha) g g;   p <- p + (-lr) g / (sqrt(s) + eps)

    (``s.mul_(alpha).addcmul_(g, g, value=1 - alpha)``; ``p.addcdiv_(g, sqrt(s).add_(eps), value=-lr)``)."""
    for i in range(len(ps)):
        rmsprop_span(ps[i], gs[i], sqs[i], rmsprop_step(steps[i], lr, alpha, eps, ps[i]))


@numba.njit(cache=True)
def rmsprop_step(st, lr, alpha, eps, like):  # noqa: ANN001, ANN201
    """One parameter's RMSprop step begun: its count ``st`` (a one-element array) incremented, and the step's
    scalars for :func:`rmsprop_span` in the dtype of ``like``: ``alpha``, ``1 - alpha``, ``eps``, ``-lr``."""
    st[0] += 1
    return cast(alpha, like), cast(1.0 - alpha, like), cast(eps, like), cast(-lr, like)


@numba.njit(cache=True, error_model="numpy")
def rmsprop_span(p, g, sq, c):  # noqa: ANN001, ANN201
    """RMSprop's update (:func:`rmsprop`) of the elements of ``p``, ``sq`` (any span of a parameter) with the
    gradient ``g``, the step's scalars ``c`` from :func:`rmsprop_step`."""
    for j in range(p.size):
        _rmsprop_at(p, g, sq, j, c)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _rmsprop_at(p, g, sq, j, c):  # noqa: ANN001, ANN202
    """Element ``j`` of :func:`rmsprop_span`."""
    a, ca, e, step = c
    gj = g[j]
    sj = sq[j] * a + ca * gj * gj
    sq[j] = sj
    p[j] = p[j] + step * gj / (np.sqrt(sj) + e)


@numba.njit(cache=True)
def update_due(t, n_seq, every):  # noqa: ANN001, ANN201
    """Whether the loop's schedule updates after step ``t`` of a sequence of ``n_seq`` steps: ``(t + 1) % every
    == 0`` or the sequence's last step."""
    return t == n_seq - 1 or (t + 1) % every == 0


@numba.njit(cache=True)
def scheduled_update(update, done, kind, ps, gs, ms, vs, steps, hyper):  # noqa: ANN001, ANN201
    """A step's end in an online kernel: where ``update`` (the loop's schedule), the optimizer's update of every
    parameter but ``ps[done]`` (:func:`apply_update_rest`). Returns the updates applied (0 or 1) and whether the
    accumulator holds estimates not yet applied (the step's, where it did not update)."""
    if update:
        apply_update_rest(kind, ps, gs, ms, vs, steps, hyper, done)
        return 1, False
    return 0, True


@numba.njit(cache=True)
def row_update_begin(kind, st, hyper, like):  # noqa: ANN001, ANN201
    """One parameter's optimizer step begun, for :func:`row_update` of its spans (rows) one at a time: its step
    count ``st`` (a one-element array) incremented where the optimizer keeps one, and the step's scalars, one
    tuple for every kind (``hyper`` as :func:`apply_update`'s, float64; the scalars in the dtype of ``like``):
    ``ADAM`` :func:`adam_step`'s; ``RMSPROP`` :func:`rmsprop_step`'s in places 1, 2, 6, 7; ``SGD`` ``-lr`` in
    place 7. The step size is ``hyper[0]``: a parameter fused so must be one of the first parameter group's."""
    z = cast(0.0, like)
    if kind == ADAM:
        return adam_step(st, hyper[0], hyper[1], hyper[2], hyper[3], like)
    if kind == RMSPROP:
        a, ca, e, step = rmsprop_step(st, hyper[0], hyper[1], hyper[3], like)
        return 0.0, a, ca, z, z, z, e, step
    return 0.0, z, z, z, z, z, z, cast(-hyper[0], like)


@numba.njit(cache=True, error_model="numpy")
def row_update(kind, p, g, ms, vs, r, c):  # noqa: ANN001, ANN201
    """The optimizer's update of row ``r`` of a parameter (the same arithmetic as its whole update): ``p`` the
    row, ``g`` its summed estimate (then zeroed: the loop's accumulator, or a scratch row kept zero), ``ms``,
    ``vs`` the optimizer's state by rows (Adam's moments, RMSprop's ``square_avg`` in ``ms``; not read by SGD,
    which keeps none), ``c`` the step's scalars from :func:`row_update_begin`.

    A kernel that fuses a parameter's update into a pass over its rows calls ``c = row_update_begin(kind,
    steps[i], hyper, W)`` once at an update, ``row_update(kind, W[r], g_r, m_rows, v_rows, r, c)`` as each row's
    sum is complete, and :func:`apply_update_rest` for the other parameters."""
    if kind == ADAM:
        adam_span(p, g, ms[r], vs[r], c)
    elif kind == RMSPROP:
        rmsprop_span(p, g, ms[r], (c[1], c[2], c[6], c[7]))
    else:
        sgd_span(p, g, c[7])
    for j in range(g.size):
        g[j] = 0.0


@numba.njit(cache=True)
def td_error(y_hat, x, y, on, ci, di, gamma, decay, v_prev, nb):  # noqa: ANN001, ANN201
    """One sample's TD(lambda) step (:mod:`neuro.rules.td`) from its output ``y_hat`` [n_out], input ``x`` and
    target ``y`` [n_out]: ``v_t = sum_k y_hat_k``, ``c_t = x[ci]`` (``ci < 0``: ``sum_k y_k``), ``gamma_t =
    gamma`` (``gamma x[di]`` where ``di >= 0``), ``delta_t = c_t + gamma_t v_t - v_prev``. Returns ``(v_t,
    delta_t, the estimate's weight -[on] delta_t / nb, lam gamma_t)``, ``decay = lam gamma`` (``gamma``,
    ``decay`` and ``nb`` in the outputs' dtype)."""
    zero = cast(0.0, y_hat)
    v = zero
    for o in range(y_hat.shape[0]):
        v += y_hat[o]
    if ci >= 0:
        cum = x[ci]
    else:
        cum = zero
        for o in range(y.shape[0]):
            cum += y[o]
    gt, dt = gamma, decay
    if di >= 0:
        gt, dt = gamma * x[di], decay * x[di]
    dl = cum + gt * v - v_prev
    return v, dl, (-dl if on else zero) / nb, dt


@numba.njit(cache=True)
def lr_of(hyper, i):  # noqa: ANN001, ANN201
    """The step size of parameter ``i``: ``hyper[4 + i]`` where ``hyper`` gives one per parameter (an optimizer
    whose parameter groups differ in ``lr``), else ``hyper[0]``."""
    return hyper[4 + i] if hyper.size > 4 else hyper[0]


@numba.njit(cache=True)
def apply_update(kind, ps, gs, ms, vs, steps, hyper):  # noqa: ANN001, ANN201
    """One optimizer step with the summed estimates ``gs``, which are then zeroed (the loop's accumulator):
    ``SGD`` (``hyper`` = ``[lr, ...]``), ``ADAM`` (``ms``, ``vs`` the moments; ``hyper`` = ``[lr, beta1, beta2,
    eps]``) or ``RMSPROP`` (``ms`` the ``square_avg``; ``hyper`` = ``[lr, alpha, 0, eps]``); ``hyper`` float64.
    ``hyper`` may go on with one ``lr`` per parameter (:func:`lr_of`)."""
    apply_update_rest(kind, ps, gs, ms, vs, steps, hyper, -1)


@numba.njit(cache=True)
def apply_update_rest(kind, ps, gs, ms, vs, steps, hyper, done):  # noqa: ANN001, ANN201
    """:func:`apply_update` of every parameter but ``ps[done]`` (updated already, row by row: :func:`row_update`;
    ``done = -1``: none), their sums zeroed. A parameter whose step count ``steps[i]`` is empty is held (a
    network's fixed parameter, which ``torch.optim`` never sees with a gradient): only its sum is zeroed."""
    for i in range(len(ps)):
        if i != done:
            update_one(kind, ps[i], gs[i], ms[i], vs[i], steps[i], lr_of(hyper, i), hyper)


@numba.njit(cache=True)
def update_one(kind, p, g, m, v, st, lr, hyper):  # noqa: ANN001, ANN201
    """One parameter's step of :func:`apply_update_rest`: ``p`` with its summed estimate ``g`` (then zeroed), its
    optimizer state ``m``, ``v`` and step count ``st`` (empty: held), step size ``lr``."""
    if st.size == 0:  # held: its sum zeroed alone
        pass
    elif kind == SGD:
        sgd_span(p, g, cast(-lr, p))
    elif kind == ADAM:
        adam_span(p, g, m, v, adam_step(st, lr, hyper[1], hyper[2], hyper[3], p))
    else:
        rmsprop_span(p, g, m, rmsprop_step(st, lr, hyper[1], hyper[3], p))
    for j in range(g.size):
        g[j] = 0.0


@numba.njit(cache=True, error_model="numpy")
def update_synapses(kind, p, g, m, v, st, lr, hyper, ptr, idx):  # noqa: ANN001, ANN201
    """:func:`update_one` of a sparse matrix ``p`` (flat, ``[rows, cols]``) on its synapses alone, row ``r``'s
    columns ``idx[ptr[r]:ptr[r + 1]]``, by the same element arithmetic, their sums ``g`` zeroed. The entries off
    the synapses are left as they are, which is what :func:`update_one` does to an entry whose sum and optimizer
    state are 0, as a sparse network keeps them."""
    rows = ptr.size - 1
    cols = p.size // rows
    held = st.size == 0
    if held:
        c = (0.0, cast(0.0, p), cast(0.0, p), cast(0.0, p), cast(0.0, p), cast(0.0, p), cast(0.0, p), cast(0.0, p))
    elif kind == ADAM:
        c = adam_step(st, lr, hyper[1], hyper[2], hyper[3], p)
    elif kind == RMSPROP:
        a, ca, e, step = rmsprop_step(st, lr, hyper[1], hyper[3], p)
        c = (0.0, a, ca, e, step, cast(0.0, p), cast(0.0, p), cast(0.0, p))
    else:
        c = (0.0, cast(-lr, p), cast(0.0, p), cast(0.0, p), cast(0.0, p), cast(0.0, p), cast(0.0, p), cast(0.0, p))
    small = c[0] < 0.5
    for r in range(rows):
        for q in range(ptr[r], ptr[r + 1]):
            j = r * cols + idx[q]
            if held:
                pass
            elif kind == ADAM:
                _adam_at(p, g, m, v, j, c, small)
            elif kind == RMSPROP:
                _rmsprop_at(p, g, m, j, (c[1], c[2], c[3], c[4]))
            else:
                _sgd_at(p, g, j, c[1])
            g[j] = 0.0
