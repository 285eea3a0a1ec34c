"""NeuroBench's own metrics for this project's networks.

NeuroBench (Yik et al., "The neurobench framework for benchmarking neuromorphic computing algorithms and
systems", Nature Communications 2025; package ``neurobench``) measures a ``torch.nn.Module`` through hooks:

- *synaptic operations* (``SynapticOperations``) only through ``nn.Linear``, ``nn.Conv*`` and ``nn.*Cell``
  modules: a forward pre-hook keeps each call's input, and the operations of a call are those of a copy of the
  layer whose non-zero weights are 1 (biases dropped) applied to the input with its non-zero entries set to 1.
  A call whose input holds only 0 and +-1 is *spiking*: its operations are accumulates (``Effective_ACs``),
  else multiply-accumulates (``Effective_MACs``); ``Dense`` counts every weight times every input. An
  ``nn.LSTMCell`` also counts its element-wise gate products (NeuroBench's ``lstm_cell_macs``). A product
  written as ``F.linear`` or ``@`` is invisible to it;
- *activation sparsity* (``ActivationSparsity``): the fraction of zeros among the outputs of the modules it
  knows as activations (``nn.ReLU``, ``nn.Sigmoid`` and those given to ``add_activation_module`` before the
  ``Benchmark`` is built, which is when the hooks are placed), over every call, step and sample;
- static: ``Footprint`` (bytes of the module's parameters and buffers), ``ConnectionSparsity`` (zeros among
  the weights of those layers, rounded to 4 decimals; an RNN cell's biases count as its weights there),
  ``ParameterCount``; and ``SMAPE`` (``200 mean(|p - y| / (|p| + |y|))``) or ``ClassificationAccuracy``.

:func:`to_torch` writes a network of :mod:`models` (``rate``, ``lstm``, ``lif``, ``alif``) as such a module:
the input, recurrent and readout synapses are bias-free ``nn.Linear`` layers holding copies of the trained
weights (the LSTM: one ``nn.LSTMCell`` for both, as NeuroBench's own Mackey-Glass LSTM), the biases separate
parameters, and the neuron's nonlinearity (rate: the leaky ``tanh`` unit; LIF/ALIF: the spike function; LSTM:
an identity on ``h``) a module :func:`measure` registers as an activation. A spiking network's recurrent and
readout layers then receive binary spikes, which NeuroBench counts as accumulates. The element-wise
sub-threshold update of LIF/ALIF is the model's own (``LIF._integrate``), so the module computes exactly the
dynamics of ``neuro.simulate``.

Known ways NeuroBench reports a wrong number without an error, each guarded here (and tested):
a workload metric that raises is reported as 0.0 (silently with ``quiet=True``: a prediction shaped unlike
its target scores a perfect sMAPE of 0), a static one as None; a product it cannot see gives 0 operations;
an activation not registered gives an activation sparsity of 0. :func:`measure` raises instead.

*What differs from the network.* A torch ``LSTMCell`` holds two bias vectors (``bias_ih``, ``bias_hh``); the
network has one, ``b``, so ``bias_hh`` is 0: Footprint and ParameterCount count ``4 n_hidden`` values more
than the network stores, and ConnectionSparsity counts them as zero connections. NeuroBench's dense count of
an ``LSTMCell`` sets the input to ones but binarises the state ``(h, c)`` as it is (its ``cylce_tuple_ones``
calls ``cylce_tuple`` on nested tuples), so at the first step, from the zero state, it counts no recurrent
operations: the LSTM's ``dense`` is a little under ``4 n (n_in + n) + 3 n + n_out n`` per step.

Footprint counts the bytes of the parameters in their dtype (8 per value in float64, 4 in float32): the
network's state is not a buffer of this module (NeuroBench's Mackey-Glass LSTM keeps its window and states
as buffers, so its footprint includes them).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from neuro.contract import AbstractNetwork, Params

__all__ = ["SUPPORTED", "LSTMHidden", "NetworkModule", "RateUnit", "SpikeFunction", "measure", "to_torch"]

#: the networks :func:`to_torch` can write as a NeuroBench module
SUPPORTED = ("rate", "lstm", "lif", "alif")
KINDS = ("regression", "classification")


class RateUnit(nn.Module):
    """The rate neuron's nonlinearity ``h_t = (1 - alpha) h_{t-1} + alpha tanh(i_t)`` (``models.rate``)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, i: Tensor, h: Tensor) -> Tensor:
        if self.alpha == 1.0:
            return torch.tanh(i)
        return (1.0 - self.alpha) * h + self.alpha * torch.tanh(i)


class SpikeFunction(nn.Module):
    """The spike ``z = H(v - threshold)``, times ``active`` (0 while refractory) when given (``models.lif``)."""

    def forward(self, v: Tensor, threshold: Tensor | float, active: Tensor | None = None) -> Tensor:
        z = (v > threshold).to(v.dtype)
        return z if active is None else z * active


class LSTMHidden(nn.Module):
    """The LSTM's output ``h`` unchanged: the module whose output NeuroBench's activation sparsity reads."""

    def forward(self, h: Tensor) -> Tensor:
        return h


#: the activation modules :func:`measure` registers with NeuroBench before building its Benchmark
ACTIVATIONS = (RateUnit, SpikeFunction, LSTMHidden)


def _classes() -> tuple[type, ...]:
    import models

    return (models.RateRNN, models.LSTM, models.LIF, models.ALIF)


def _copy(t: Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=False)


def _linear(w: Tensor) -> nn.Linear:
    """A bias-free ``nn.Linear`` holding a copy of ``w`` [out, in]."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype, device=w.device)
    lin.weight = _copy(w)
    return lin


class NetworkModule(nn.Module):
    """A network of :data:`SUPPORTED` as an ``nn.Module``: ``forward(x [B, T, n_in]) -> y [B, T, n_out]`` (or
    ``[T, n_in] -> [T, n_out]``), from rest, the steps of ``net.step`` written with NeuroBench-visible layers
    (module docstring). ``autonomous_from=k``: closed loop from step ``k`` (:func:`to_torch`)."""

    def __init__(self, net: AbstractNetwork, params: Params, autonomous_from: int | None = None) -> None:
        super().__init__()
        if type(net) not in _classes():
            raise ValueError(f"network {net.name!r} ({type(net).__name__}) is not supported by the NeuroBench "
                             f"adapter: supported are {', '.join(map(repr, SUPPORTED))}")
        net.check_params(params)
        if autonomous_from is not None:
            if isinstance(autonomous_from, bool) or not isinstance(autonomous_from, int) or autonomous_from < 1:
                raise ValueError(f"autonomous_from={autonomous_from!r} is invalid: expected an integer >= 1 (the "
                                 "first step whose input is built from the previous prediction)")
            if net.n_out != 1:
                raise ValueError(f"autonomous_from={autonomous_from!r} needs n_out=1 (one predicted value fed "
                                 f"back into an input window of n_in values); the network has n_out={net.n_out}")
        self.net = net
        self.autonomous_from = autonomous_from
        p = params
        if net.name == "lstm":
            n = net.n_hidden
            self.cell = nn.LSTMCell(net.n_in, n, bias=True, dtype=p["W_in"].dtype, device=p["W_in"].device)
            self.cell.weight_ih, self.cell.weight_hh = _copy(p["W_in"]), _copy(p["W_rec"])
            self.cell.bias_ih, self.cell.bias_hh = _copy(p["b"]), _copy(torch.zeros_like(p["b"]))
            self.unit: nn.Module = LSTMHidden()
        else:
            self.inp, self.rec = _linear(p["W_in"]), _linear(p["W_rec"])
            self.b = _copy(p["b"])
            self.unit = RateUnit(net.alpha) if net.name == "rate" else SpikeFunction()
            if net.name == "rate" and net.decorrelation:
                self.decorrelate = _linear(p["D"])
        self.out = _linear(p["W_out"])
        self.b_out = _copy(p["b_out"])
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        net = self.net
        unbatched = x.dim() == 2
        if unbatched:
            x = x[None]
        if x.dim() != 3 or x.shape[-1] != net.n_in:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected [B, T, n_in={net.n_in}] or [T, n_in]")
        x = x.to(dtype=self.out.weight.dtype, device=self.out.weight.device)
        state = net.init_state({"W_out": self.out.weight}, x.shape[0])
        step = {"rate": self._rate, "lstm": self._lstm}.get(net.name, self._spiking)
        ys, x_prev, y_prev = [], None, None
        for t in range(x.shape[1]):
            if self.autonomous_from is not None and t >= self.autonomous_from:
                x_t = torch.cat([x_prev[:, 1:], y_prev], dim=-1)  # the window shifted, the prediction appended
            else:
                x_t = x[:, t]
            state, y = step(state, x_t)
            ys.append(y)
            x_prev, y_prev = x_t, y
        y = torch.stack(ys, dim=1)
        return y[0] if unbatched else y

    def _rate(self, state: Any, x: Tensor) -> tuple[Any, Tensor]:
        i = self.inp(x) + self.rec(state.h) + self.b
        h = self.unit(i, state.h)
        if self.net.decorrelation:
            h = self.decorrelate(h)
        return state._replace(h=h), self.out(h) + self.b_out

    def _lstm(self, state: Any, x: Tensor) -> tuple[Any, Tensor]:
        h, c = self.cell(x, (state.h, state.c))
        h = self.unit(h)
        return state._replace(h=h, c=c), self.out(h) + self.b_out

    def _spiking(self, state: Any, x: Tensor) -> tuple[Any, Tensor]:
        """``models.lif`` / ``models.alif``: LIF's ``_integrate`` (the element-wise sub-threshold update), then
        its ``_fire`` with the spike made by :class:`SpikeFunction`, then the leaky readout."""
        net = self.net
        current = self.inp(x) + self.rec(state.z)
        v, i_new = net._integrate({"b": self.b}, state, current)
        threshold = net.v_th + net.beta_a * state.a if net.name == "alif" else net.v_th
        v, z, r = net._fire(state, v, threshold, fire=self.unit)
        new = {"v": v, "i": i_new, "z": z, "r": r}
        if net.name == "alif":
            new["a"] = net.rho * state.a + z
        y = net.kappa_out * state.y + self.out(z) + self.b_out
        return state._replace(**new, y=y), y


def to_torch(net: AbstractNetwork, params: Params, *, autonomous_from: int | None = None) -> NetworkModule:
    """``net`` with (copies of) ``params`` as an ``nn.Module`` NeuroBench can measure (module docstring).

    ``forward(x)`` takes ``x`` [B, T, n_in] (or [T, n_in]) and returns the readout [B, T, n_out] (or [T, n_out]),
    equal to ``neuro.simulate(net, params, xs).y`` with the batch and time axes swapped. ``autonomous_from=k``
    (closed loop, as NeuroBench's Mackey-Glass LSTM example): from step ``k`` (>= 1) on, the input is the
    previous step's input shifted by one with the previous prediction appended (an input window of the last
    ``n_in`` series values; ``n_in = 1``: the previous prediction), so ``x[:, k:]`` is not read. Needs
    ``n_out = 1``. A network outside :data:`SUPPORTED` raises ``ValueError``.
    """
    return NetworkModule(net, params, autonomous_from)


class MetricError(RuntimeError):
    """A NeuroBench metric raised (NeuroBench itself would report 0.0 or None) or saw nothing to measure."""


def _guarded(cls: type, errors: list[tuple[str, BaseException]]) -> type:
    """``cls`` whose call records any exception in ``errors`` before NeuroBench's manager swallows it, and
    which refuses to measure nothing: no activation output (ActivationSparsity), no layer input
    (SynapticOperations)."""

    def __call__(self: Any, *args: Any) -> Any:
        try:
            if cls.__name__ == "ActivationSparsity" and not any(h.activation_outputs for h in args[0].activation_hooks):
                raise MetricError("no activation visible to NeuroBench: no registered activation module produced "
                                  "an output (register it with add_activation_module before building the Benchmark)")
            if cls.__name__ == "SynapticOperations" and not any(h.inputs for h in args[0].connection_hooks):
                raise MetricError("no synapse visible to NeuroBench: no nn.Linear/Conv/RNN-cell layer was called "
                                  "(a product written as F.linear or @ is not counted)")
            return cls.__call__(self, *args)
        except Exception as e:  # noqa: BLE001 - recorded and raised again after the run
            errors.append((cls.__name__, e))
            raise

    return type(cls.__name__, (cls,), {"__call__": __call__})


def run_benchmark(module: nn.Module, x: Tensor, y: Tensor, *, task: str = "regression",
                  postprocess: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
    """NeuroBench's ``Benchmark`` on ``module`` over one batch ``x`` [B, T, n_in] with targets ``y``, guarded:
    the activation modules of :data:`ACTIVATIONS` registered before the Benchmark is built, a prediction shaped
    unlike ``y`` a ``ValueError`` naming both shapes, any metric's exception raised (as :class:`MetricError`),
    zero synaptic operations a :class:`MetricError`. Returns NeuroBench's own results dict (per sample =
    per sequence)."""
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
    from neurobench.metrics.workload import SMAPE, ActivationSparsity, ClassificationAccuracy, SynapticOperations
    from neurobench.models import TorchModel
    from torch.utils.data import DataLoader, TensorDataset

    if task not in KINDS:
        raise ValueError(f"task={task!r} is invalid: valid choices are {', '.join(map(repr, KINDS))}")
    model = TorchModel(module)
    for cls in ACTIVATIONS:  # before the Benchmark: its constructor places the hooks
        model.add_activation_module(cls)
    if not model.activation_layers():
        raise MetricError(f"no activation visible to NeuroBench: {type(module).__name__} has no module of "
                          f"{', '.join(c.__name__ for c in ACTIVATIONS)}")

    def check(preds: Tensor) -> Tensor:
        preds = postprocess(preds) if postprocess is not None else preds
        if tuple(preds.shape) != tuple(y.shape):
            raise ValueError(f"the prediction has shape {tuple(preds.shape)} but the target {tuple(y.shape)}: "
                             "NeuroBench would score it 0.0")
        return preds

    errors: list[tuple[str, BaseException]] = []
    scored = SMAPE if task == "regression" else ClassificationAccuracy
    static = [_guarded(c, errors) for c in (Footprint, ConnectionSparsity, ParameterCount)]
    workload = [_guarded(c, errors) for c in (ActivationSparsity, SynapticOperations, scored)]
    loader = DataLoader(TensorDataset(x, y), batch_size=x.shape[0], shuffle=False)
    bench = Benchmark(model, loader, [], [check], [static, workload])
    try:
        with torch.no_grad():
            results = bench.run(quiet=True)
    finally:
        model.cleanup_hooks()
    if errors:
        name, e = errors[0]
        if isinstance(e, MetricError):
            raise e
        raise MetricError(f"NeuroBench's {name} raised {type(e).__name__}: {e}") from e
    missing = [k for k in ("Footprint", "ConnectionSparsity", "ParameterCount", "ActivationSparsity",
                           "SynapticOperations", scored.__name__) if results.get(k) is None]
    if missing:
        raise MetricError(f"NeuroBench returned no value for {', '.join(missing)}")
    if results["SynapticOperations"]["Dense"] == 0:
        raise MetricError("no synapse visible to NeuroBench: 0 dense synaptic operations (a product written as "
                          "F.linear or @ is not counted)")
    return results


def measure(net: AbstractNetwork, params: Params, xs: Tensor, ys: Tensor, *, autonomous_from: int | None = None,
            metrics: str | None = None) -> dict[str, float]:
    """NeuroBench's metrics of ``net`` (``params``) run on ``xs``, scored against ``ys``, as plain floats.

    ``xs`` [T, B, n_in] (or [T, n_in]), the repository's convention (``neuro.simulate``); the network runs from
    rest over all ``T`` steps (``autonomous_from``: closed loop from that step, :func:`to_torch`). ``metrics``:
    ``"regression"`` (sMAPE; ``ys`` [T, B, n_out] or [T, n_out], the readout of every step), ``"classification"``
    (accuracy; ``ys`` integer labels [B]: the argmax of the readout's mean over time, or [T, B]: the argmax of
    every step's readout), or None: classification for integer ``ys``, else regression.

    Returns ``footprint_bytes``, ``parameter_count``, ``connection_sparsity`` (static: NeuroBench's own);
    ``activation_sparsity`` (zeros among the activation modules' outputs over every step and sequence);
    ``dense``, ``effective_macs``, ``effective_acs``: synaptic operations *per time step* (NeuroBench divides
    its counts by the number of samples, here sequences of ``T`` steps; these are its figures divided by
    ``T``; ``*_per_sequence`` are NeuroBench's own figures: in NeuroBench's Mackey-Glass example a sample is
    one time step, so its figures are per step too); ``smape`` or ``accuracy``; ``steps`` and ``sequences``.
    Raises ``ValueError`` for inputs or targets of the wrong shape and :class:`MetricError` where NeuroBench
    would report a wrong number silently (:func:`run_benchmark`).
    """
    if not isinstance(xs, Tensor) or not isinstance(ys, Tensor):
        raise TypeError(f"xs and ys must be torch.Tensors, got {type(xs).__name__} and {type(ys).__name__}")
    if xs.dim() == 2:
        xs = xs[:, None, :]
        if ys.dim() == 2 and ys.dtype.is_floating_point:
            ys = ys[:, None, :]
    if xs.dim() != 3 or xs.shape[-1] != net.n_in:
        raise ValueError(f"xs has shape {tuple(xs.shape)}: expected [T, B, n_in={net.n_in}] or [T, n_in]")
    T, B = xs.shape[0], xs.shape[1]
    if T == 0:
        raise ValueError("xs has shape (0, ...): expected at least one time step")
    kind = metrics if metrics is not None else ("regression" if ys.dtype.is_floating_point else "classification")
    if kind not in KINDS:
        raise ValueError(f"metrics={metrics!r} is invalid: valid choices are None, {', '.join(map(repr, KINDS))}")
    module = to_torch(net, params, autonomous_from=autonomous_from)
    dtype = module.out.weight.dtype
    x = xs.to(dtype).transpose(0, 1)  # [B, T, n_in]: NeuroBench's samples are the sequences
    postprocess = None
    if kind == "regression":
        want = (T, B, net.n_out)
        if tuple(ys.shape) != want:
            raise ValueError(f"ys has shape {tuple(ys.shape)}: expected [T, B, n_out] = {want} for regression")
        y = ys.to(dtype).transpose(0, 1)
    else:
        if ys.dtype.is_floating_point or ys.dtype == torch.bool:
            raise ValueError(f"ys has dtype {ys.dtype}: classification needs integer labels")
        if tuple(ys.shape) == (B,):
            y, postprocess = ys, (lambda p: p.mean(1).argmax(-1))
        elif tuple(ys.shape) == (T, B):
            y, postprocess = ys.transpose(0, 1), (lambda p: p.argmax(-1))
        else:
            raise ValueError(f"ys has shape {tuple(ys.shape)}: expected integer labels [B] = ({B},) or [T, B] = "
                             f"({T}, {B}) for classification")
    r = run_benchmark(module, x, y, task=kind, postprocess=postprocess)
    ops = r["SynapticOperations"]
    out = {
        "footprint_bytes": float(r["Footprint"]),
        "parameter_count": float(r["ParameterCount"]),
        "connection_sparsity": float(r["ConnectionSparsity"]),
        "activation_sparsity": float(r["ActivationSparsity"]),
        "dense": float(ops["Dense"]) / T,
        "effective_macs": float(ops["Effective_MACs"]) / T,
        "effective_acs": float(ops["Effective_ACs"]) / T,
        "dense_per_sequence": float(ops["Dense"]),
        "effective_macs_per_sequence": float(ops["Effective_MACs"]),
        "effective_acs_per_sequence": float(ops["Effective_ACs"]),
        "steps": float(T),
        "sequences": float(B),
    }
    if kind == "regression":
        out["smape"] = float(r["SMAPE"])
    else:
        out["accuracy"] = float(r["ClassificationAccuracy"])
    return out
