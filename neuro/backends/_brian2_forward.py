"""The forward function of the perturbation rules (``neuro.rules.node``) run in Brian2:
:class:`Brian2Forward`, one step of ``M`` rows of a spiking model per call, on a network built once per ``M``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from neuro.backends._brian2_network import _inputs, check_model, check_target
from neuro.backends._brian2_runner import _get
from neuro.contract import AbstractNetwork, Params


@dataclasses.dataclass(frozen=True)
class Brian2Forward:
    """The forward function of the perturbation rules (``neuro.rules.node``'s protocol) run in Brian2.

    ``forward(params, state, x, xi_h, xi_y) -> Pass``: one step of ``M`` rows in Brian2 (one run of one
    step of a network built once per ``M``), from ``state`` (a ``net.State``). The state's ``i`` is Brian2's
    synaptic variable at the end of the step, after the synapses delivered this step's spikes, so that the
    next step sees ``W_rec z_t`` through Brian2's own synapses (the torch ``i_t + W_rec z_t``; ``init_state``'s
    zeros are the same in both). ``h = W_in x + W_rec z_{t-1} + xi_h`` and the readout are computed in torch
    float64 as in :class:`neuro.rules.node.TorchForward`. Use as ``neuro.rules.make("np", net,
    forward=Brian2Forward(net))``.
    """

    net: AbstractNetwork
    target: str = "numpy"

    def __post_init__(self) -> None:
        check_model(self.net)
        if self.net.name == "stack":
            raise ValueError(f"model 'stack' is not expressed by Brian2Forward: it covers the single-layer spiking "
                             f"models 'lif', 'alif'; use the default forward (backend='torch') for {self.net!r}")
        if not self.net.spiking:
            raise ValueError(f"model {self.net.name!r} is not expressed by Brian2Forward: it covers the spiking "
                             f"models 'lif', 'alif'; use the default forward (backend='torch') for "
                             f"{self.net.name!r}")
        check_target(self.target)

    def __call__(self, params: Params, state: NamedTuple, x: Tensor, xi_h: Tensor | None = None,
                 xi_y: Tensor | None = None):
        from neuro.rules.node import Pass

        net, n = self.net, self.net.n_hidden
        p = next(iter(params.values()))
        M = x.shape[0]
        with torch.no_grad():
            x64 = x.detach().cpu().double()
            I_in = x64 @ net.weight(params, "W_in").detach().cpu().double().T
            if xi_h is not None:
                I_in = I_in + xi_h.detach().cpu().double()
            h = I_in + state.z.detach().cpu().double() @ net.weight(params, "W_rec").detach().cpu().double().T
            sim = _get(net, M, 1, False, self.target)
            out = sim(_inputs(net, params, I_in.reshape(1, M * n).numpy(), state, M))
            z = torch.from_numpy(out.spikes).reshape(M, n)
            W_out, b_out = params["W_out"].detach().cpu().double(), params["b_out"].detach().cpu().double()
            a = z @ W_out.T + b_out
            y = net.kappa_out * state.y.detach().cpu().double() + a
            if xi_y is not None:
                a = a + xi_y.detach().cpu().double()
                y = y + xi_y.detach().cpu().double()

            def back(arr):
                return torch.from_numpy(np.ascontiguousarray(arr)).reshape(M, n).to(dtype=p.dtype, device=p.device)

            f = out.final
            fields = {"v": back(f["v"]), "i": back(f["isyn"]), "z": z.to(dtype=p.dtype, device=p.device), "r": back(f["r"]),
                      "y": y.to(dtype=p.dtype, device=p.device)}
            if net.name == "alif":
                fields["a"] = back(f["a"])
            new = type(state)(**fields)
            cast = lambda u: u.to(dtype=p.dtype, device=p.device)  # noqa: E731
            return Pass(new, cast(y), cast(h), cast(a), fields["z"])
