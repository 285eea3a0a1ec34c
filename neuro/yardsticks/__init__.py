"""External yardsticks: this project's networks measured by other projects' own benchmark code.

- :mod:`neuro.yardsticks.neurobench`: NeuroBench's metrics (Yik et al., Nature Communications 2025; the
  ``neurobench`` package): footprint, connection sparsity, activation sparsity, synaptic operations, sMAPE.

Nothing is imported here eagerly (``neurobench`` pulls in snntorch); import the submodule itself.
"""
