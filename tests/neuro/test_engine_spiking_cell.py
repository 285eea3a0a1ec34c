"""The compiled LIF/ALIF cell's coefficients as scalars (``neuro.engine.spiking.frozen``): every coefficient and
code of the cell's arrays, and the unit's step and derivatives from them equal to those from the arrays."""

from __future__ import annotations

import numpy as np
import pytest

import models
from neuro.engine import spiking as S


@pytest.mark.parametrize("name,options", [("lif", {}), ("alif", {"dynamics": "euler", "reset": "zero", "refractory": 2,
                                                                "surrogate": "fast-sigmoid", "detach_reset": True})])
def test_frozen_cell_holds_every_coefficient_and_steps_as_the_arrays(name, options):
    net = models.make(name, n_in=2, n_hidden=3, n_out=1, **options)
    cf, ci = S.cell(net, np.float64)
    kf, ki = S.frozen(cf, ci)
    assert len(kf) == S.N_CF and list(kf) == list(cf) and list(ki) == list(ci)
    rng = np.random.default_rng(0)
    for _ in range(20):
        b, I, v, i, a = rng.uniform(-0.5, 1.5, 5)
        r = float(rng.integers(0, 3))
        out_a, out_t = S.unit(cf, ci, b, I, v, i, r, a), S.unit(kf, ki, b, I, v, i, r, a)
        assert out_a == out_t
        vt, psi, act, z = out_a[5], out_a[6], out_a[7], out_a[2]
        assert S.jacobian(cf, ci, vt, z, psi, act) == S.jacobian(kf, ki, vt, z, psi, act)
