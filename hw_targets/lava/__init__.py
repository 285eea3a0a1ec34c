"""Deployment to Intel's Lava (lava-nc 0.10.0).

Importing this package imports no lava: it only installs the import hook of
:mod:`hw_targets.lava._compat`, which makes lava-nc 0.10.0 importable under Python 3.11, so modules of
this package may ``import lava...`` at their top. :func:`ensure_lava` imports lava and returns its
version, with a clear error when lava-nc is missing.

``export(net, params, fixed_point=False) -> LavaNetwork`` (:mod:`.network`) runs a ``lif`` network (or a
stack of ``lif`` layers, one LIF process per layer) as Lava processes (``neuro.simulate(..., backend="lava" |
"lava-fixed")``), and a ``lif-loihi`` network (or stack) as it is in fixed point; ``check_loihi(net, params)``
(:mod:`.constraints`) checks Loihi's limits (fan-in, weight bits, synapse memory per core, cores), as export does; ``quantize(net, params)`` (:mod:`.quantization`) maps a ``lif`` network to Loihi's
integer model (``models.lif_loihi``);
``export_learning(net, params, rule)`` (:mod:`.learning`) runs the ``three-factor`` rule on the chip's
learning engine; :mod:`.chip_in_the_loop` trains with perturbation rules whose forward passes run in
Lava. All are imported on first use.
"""

from hw_targets.lava._compat import LavaCompatError, ensure_lava, install

install()

import_lava = ensure_lava  # alias: installs the hook, imports lava, returns the lava-nc version

__all__ = ["LOIHI", "LavaCompatError", "LavaLearningNetwork", "LavaNetwork", "LoihiLimits", "QuantizationReport",
           "check_loihi", "ensure_lava", "export", "export_learning", "import_lava", "loihi_form", "loihi_mapping",
           "loihi_params", "quantize"]

_LAZY = {"export": "network", "LavaNetwork": "network", "loihi_params": "network", "quantize": "quantization",
         "QuantizationReport": "quantization", "quantization_error": "quantization",
         "export_learning": "learning", "LavaLearningNetwork": "learning", "loihi_form": "learning",
         "check_loihi": "constraints", "loihi_mapping": "constraints", "LoihiLimits": "constraints",
         "LOIHI": "constraints"}


def __getattr__(name: str):
    """``export``, ``LavaNetwork`` (:mod:`.network`) and ``quantize`` (:mod:`.quantization`), imported on
    first use: they import torch and the models, never lava itself until a network runs."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
