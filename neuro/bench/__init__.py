"""``neuro bench``: benchmarks that write a JSON and a Markdown table (machine, versions, every figure).

Sections: ``sim`` (forward simulation speed, with peers; :mod:`neuro.bench.sim`), ``influence`` (the
UORO paper's truncation-bias test; :mod:`neuro.bench.influence`), ``span`` (NoBackTrack against T-BPTT
as the dependency length grows; :mod:`neuro.bench.span`), ``cost`` (time per step against n for the
RTRL family and BPTT, fitted exponents; :mod:`neuro.bench.cost`).
``main(["sim", ...])`` runs a section with its own options; nothing here is a timed test.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["SECTIONS", "main"]

SECTIONS = {"sim": "neuro.bench.sim", "influence": "neuro.bench.influence", "span": "neuro.bench.span",
            "cost": "neuro.bench.cost", "seeds": "neuro.bench.seeds",
            "memory": "neuro.bench.memory",
            "local": "neuro.bench.local",
            "patterns": "neuro.bench.patterns",
            "perturbation": "neuro.bench.perturbation",
            "brian2": "neuro.bench.brian2", "rules": "neuro.bench.rules",
            }


def main(argv: list[str] | None = None) -> int:
    """``neuro bench SECTION [options]``: run one benchmark section (``--help`` after it for its options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: neuro bench {{{','.join(SECTIONS)}}} [options]\n\n{__doc__}")
        return 0 if argv else 2
    section, rest = argv[0], argv[1:]
    if section not in SECTIONS:
        print(f"neuro bench: section {section!r} is unknown: valid choices are {', '.join(map(repr, SECTIONS))}",
              file=sys.stderr)
        return 2
    return importlib.import_module(SECTIONS[section]).main(rest)
