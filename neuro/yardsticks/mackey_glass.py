"""NeuroBench's Mackey-Glass protocol: the series, the autoregressive evaluation and its sMAPE.

The benchmark (Yik et al., "The neurobench framework for benchmarking neuromorphic computing algorithms and
systems", Nature Communications 2025; repository NeuroBench/neurobench, ``neurobench/datasets/mackey_glass.py``
and ``examples/mackey_glass``; data card huggingface.co/datasets/NeuroBench/mackey_glass):

- *Series.* 14 solutions of ``dx/dt = beta x(t - tau) / (1 + x(t - tau)^n) - gamma x(t)`` (beta 0.2, gamma
  0.1, n 10, tau 17..30), each 50 Lyapunov times long at 75 points per Lyapunov time (:data:`POINTS` = 3751
  points; tau 17: Lyapunov time 197, dt = 197/75). The card's generator (``generator.py``) integrates with
  jitcdde from a constant past equal to the initial condition (:data:`PARAMETERS`), ``atol = rtol = min_step
  = 1e-17``, ``step_on_discontinuities()``, then samples ``np.linspace(t0, t0 + 50 lyap, 3751)`` from the time
  ``t0`` it stopped at (``tau``). :func:`series` regenerates it so (NeuroBench's ``MackeyGlass`` class only
  downloads the official files) and caches it once per machine. *The regenerated series may differ from the
  official files*: the card says jitcdde's output varies across machines, even with the same library versions,
  and the chaos amplifies any difference (by about e per Lyapunov time). Generating one series takes about
  two minutes of one core (the tolerances make jitcdde take tiny steps).
- *Runs.* Run ``r`` (0..29) uses the window of :data:`WINDOW` = 1501 points starting at ``int(r * 0.5 * 75)``
  (start offsets 0, 0.5, ..., 14.5 Lyapunov times, truncated to a point as NeuroBench's ``load_data`` does).
  Training: points 0..749 (input at t: the last ``W`` values up to ``x_t``, zeros before the window's start;
  target ``x_{t+1}``). Test: the network, its state warmed by the training inputs from rest, gets the true
  ``x_750`` once, then its own predictions for 749 steps (the input window shifted, the prediction appended);
  its 750 predictions are scored against ``x_751..x_1500``. Values are raw (not normalised).
- *Metric.* sMAPE ``= 200 mean(|yhat - y| / (|yhat| + |y|))`` (NeuroBench's ``SMAPE``); a NaN term (a
  non-finite prediction, or 0/0) counts 200, the largest a term can be.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from neuro.io import atomic_path, cache_root

if TYPE_CHECKING:
    from neuro.contract import AbstractNetwork, Params
    from neuro.tasks.neurobench_mg import NeuroBenchMG

__all__ = ["PARAMETERS", "PER_LYAPUNOV", "POINTS", "RUNS", "TRAIN", "WINDOW", "cache_path", "evaluate", "generate",
           "run_start", "series", "smape"]

log = logging.getLogger(__name__)

#: tau -> (Lyapunov time, initial condition): the data card's ``mackey_glass_parameters.csv``
PARAMETERS: dict[int, tuple[float, float]] = {
    17: (197.0, 0.72066), 18: (138.0, 0.774431), 19: (315.0, 0.778347), 20: (131.0, 0.922599),
    21: (191.0, 0.947943), 22: (119.0, 0.545596), 23: (106.0, 0.862225), 24: (97.0, 0.325966),
    25: (98.0, 0.829783), 26: (104.0, 1.003349), 27: (112.0, 0.649141), 28: (119.0, 1.09575),
    29: (131.0, 0.925618), 30: (139.0, 0.271364),
}
BETA, GAMMA, N = 0.2, 0.1, 10
PER_LYAPUNOV = 75             # points per Lyapunov time
LYAPUNOV_TIMES = 50           # length of each series
POINTS = LYAPUNOV_TIMES * PER_LYAPUNOV + 1   # 3751
TRAIN = 750                   # training points (10 Lyapunov times); as many test points
WINDOW = 2 * TRAIN + 1        # 1501 points per run
RUNS = 30                     # start offsets 0, 0.5, ..., 14.5 Lyapunov times


def _check_tau(tau: Any) -> int:
    if isinstance(tau, bool) or tau not in PARAMETERS:
        raise ValueError(f"tau={tau!r} is invalid: NeuroBench's series have tau in 17..30 (integers)")
    return int(tau)


def run_start(offset: int) -> int:
    """The first point of run ``offset`` (0..29): ``int(offset * 0.5 * 75)``, NeuroBench's truncation."""
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or not 0 <= offset < RUNS:
        raise ValueError(f"offset={offset!r} is invalid: must be an integer run index in 0..{RUNS - 1}")
    return int(offset * 0.5 * PER_LYAPUNOV)


def cache_path(tau: int = 17) -> Path:
    """Where the series of ``tau`` is cached: ``$NEURO_CACHE/neurobench-mg/mg_<tau>.npy`` (default
    ``~/.cache/neuro``)."""
    return cache_root() / "neurobench-mg" / f"mg_{_check_tau(tau)}.npy"


def generate(tau: int = 17) -> np.ndarray:
    """The series of ``tau`` [:data:`POINTS`] (float64) integrated by jitcdde as the data card's generator does
    (module docstring); jitcdde compiles C at run time (about two minutes in all)."""
    tau = _check_tau(tau)
    from jitcdde import jitcdde, t, y

    lyap, x0 = PARAMETERS[tau]
    f = [BETA * y(0, t - tau) / (1 + y(0, t - tau) ** N) - GAMMA * y(0)]
    dde = jitcdde(f, verbose=False)
    dde.set_integration_parameters(atol=1e-17, rtol=1e-17, min_step=1e-17)
    dde.constant_past([x0])
    dde.step_on_discontinuities()
    times = np.linspace(dde.t, dde.t + lyap * LYAPUNOV_TIMES, POINTS)
    return np.array([dde.integrate(s)[0] for s in times], dtype=np.float64)


def _load(path: Path) -> tuple[np.ndarray | None, str]:
    """The cached series at ``path`` and ``""``, or None and why it cannot be used."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        return None, f"unreadable ({type(e).__name__}: {e})"
    if x.shape != (POINTS,) or x.dtype != np.float64:
        return None, f"shape {x.shape} dtype {x.dtype}, expected ({POINTS},) float64"
    if not np.all(np.isfinite(x)):
        return None, "it holds non-finite values"
    return x, ""


def series(tau: int = 17, *, regenerate: bool = True) -> np.ndarray:
    """The series of ``tau`` [:data:`POINTS`] (float64, a fresh copy): read from :func:`cache_path`, else
    generated (:func:`generate`) and written there atomically. A cache file that cannot be used (unreadable,
    wrong shape, non-finite) is regenerated with a one-line warning, or, with ``regenerate=False``, refused
    (``FileNotFoundError`` for a missing file, ``ValueError`` for a bad one)."""
    path = cache_path(tau)
    if path.exists():
        x, why = _load(path)
        if x is not None:
            return x
        if not regenerate:
            raise ValueError(f"the cached Mackey-Glass series {str(path)!r} is unusable: {why}; delete it to "
                             "regenerate it")
        log.warning("the cached Mackey-Glass series %s is unusable (%s): regenerating it", path, why)
    elif not regenerate:
        raise FileNotFoundError(f"no cached Mackey-Glass series for tau={tau} at {str(path)!r}: call "
                                "series(tau) to generate it")
    t0 = time.perf_counter()
    x = generate(tau)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.save(tmp, x)
    log.info("generated the Mackey-Glass series tau=%s in %.0f s, cached at %s", tau, time.perf_counter() - t0, path)
    return x


def smape(pred: Any, target: Any) -> float:
    """``200 mean(|pred - target| / (|pred| + |target|))`` over arrays of one shape; a NaN term counts 200."""
    p, y = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"predictions of shape {p.shape} do not match targets of shape {y.shape}")
    if p.size == 0:
        raise ValueError("smape of no values: give at least one prediction")
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.abs(p - y) / (np.abs(p) + np.abs(y))
    terms = np.where(np.isnan(terms), 1.0, terms)
    return float(200.0 * terms.mean())


def evaluate(net: AbstractNetwork, params: Params, task: NeuroBenchMG, *, dtype: torch.dtype = torch.float64
             ) -> dict[str, Any]:
    """NeuroBench's test of ``net`` (``params``, cast to ``dtype``) on one run of ``task`` (module docstring).

    From rest, the network is stepped (``net.step``, one stream) on the training inputs ``t = 0..749``, then on
    the window ending at the true ``x_750``, then 749 times on the window shifted by its own last prediction.
    Returns ``smape`` (of the 750 test predictions against ``x_751..x_1500``), ``predictions`` and ``targets``
    [750] (float64 numpy) and ``train_predictions`` [750] (teacher-forced, against ``x_1..x_750``). A step whose
    output is not one value [1, 1] raises ``ValueError``.
    """
    if (net.n_in, net.n_out) != (task.n_in, task.n_out):
        raise ValueError(f"the network has n_in={net.n_in}, n_out={net.n_out}; task {task.name!r} with "
                         f"window={task.window} needs n_in={task.n_in}, n_out=1")
    p = {k: v.detach().to(dtype) for k, v in params.items()}
    xs, ys = task.windows()                     # [2 TRAIN, W], [2 TRAIN]: teacher-forced inputs, x_{t+1}
    preds = np.empty(2 * TRAIN)
    with torch.no_grad():
        state = net.init_state(p, 1)
        window = y = torch.zeros(1, 1, dtype=dtype)
        for t in range(2 * TRAIN):
            if t <= TRAIN:
                window = torch.as_tensor(xs[t], dtype=dtype)[None]
            else:                               # the window shifted, the last prediction appended
                window = torch.cat([window[:, 1:], y], dim=1)
            state, y = net.step(p, state, window)
            if tuple(y.shape) != (1, 1):
                raise ValueError(f"the network's output at step {t} has shape {tuple(y.shape)}: expected (1, 1) "
                                 "(one predicted value for one stream)")
            preds[t] = float(y)
    test, target = preds[TRAIN:], ys[TRAIN:]
    return {"smape": smape(test, target), "predictions": test, "targets": target.copy(),
            "train_predictions": preds[:TRAIN]}
