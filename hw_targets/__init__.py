"""Deployment targets: Lava processes (float and Loihi fixed point) and NIR graphs.

Importing ``hw_targets`` imports neither lava nor nir; each is imported only inside the submodule
that uses it (``hw_targets.lava``, ...).
"""
