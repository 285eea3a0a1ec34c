"""Deployment to Intel's Lava (lava-nc 0.10.0).

Importing this package imports no lava: it only installs the import hook of
:mod:`hw_targets.lava._compat`, which makes lava-nc 0.10.0 importable under Python 3.11, so modules of
this package may ``import lava...`` at their top. :func:`ensure_lava` imports lava and returns its
version, with a clear error when lava-nc is missing.
"""

from hw_targets.lava._compat import LavaCompatError, ensure_lava, install

install()

import_lava = ensure_lava  # alias: installs the hook, imports lava, returns the lava-nc version

__all__ = ["LavaCompatError", "ensure_lava", "import_lava"]
