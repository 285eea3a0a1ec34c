"""``neuro export lava|nir RUN_DIR``: a trained network to Lava (float or Loihi fixed point) or NIR.

A ``lif`` network (``dynamics="lava"``, ``reset="zero"``) exports to Lava in floating point, or quantized
to Loihi's integer model with ``--fixed-point``; a ``lif-loihi`` network is that integer model already and
exports as it is (``--fixed-point`` changes nothing; ``--vth`` and ``--saturate`` are refused). The output
is checked before anything runs and written atomically: a failed write keeps the previous file.

``--verify STEPS`` runs the export in Lava and the same network in torch on STEPS steps of random input
spikes and compares the spike trains: exit status 1 if they differ. Identical trains without a single spike
prove nothing; that is said on stderr as a warning and the exit status stays 0 (nothing differed).
"""

from __future__ import annotations

import argparse
import sys

from neuro.cli import PROG

__all__ = ["main"]

_DEFAULT = {"lava": "lava.npz", "nir": "network.nir"}


def _options_problems(args: argparse.Namespace) -> list[str]:
    """Every option that does not apply to ``args.target`` (or is invalid), one phrase each."""
    problems = []
    given = [flag for flag, on in (("--fixed-point", args.fixed_point), ("--vth", args.vth is not None),
                                   ("--saturate", args.saturate), ("--verify", bool(args.verify))) if on]
    if args.target == "nir" and given:
        problems.append(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to lava only")
    if args.verify < 0:
        problems.append(f"--verify {args.verify} is invalid: must be >= 0")
    return problems


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from models.lif_loihi import LIFLoihi
    from neuro.cli_files import check_output_file, load_run, os_cause
    from neuro.errors import RunFailed

    if args.target not in _DEFAULT:
        raise ValueError(f"export target {args.target!r} is invalid: valid choices are {', '.join(_DEFAULT)}")
    problems = _options_problems(args)
    run_dir = Path(args.run_dir)
    net, params = load_run(run_dir)
    quant = [flag for flag, on in (("--vth", args.vth is not None), ("--saturate", args.saturate)) if on]
    fixed = args.target == "lava" and (args.fixed_point or isinstance(net, LIFLoihi))
    if args.target == "lava" and quant:
        one = len(quant) == 1
        if isinstance(net, LIFLoihi):
            problems.append(f"{' and '.join(quant)} {'does' if one else 'do'} not apply to a 'lif-loihi' network: "
                            "it is Loihi's integer model already and exports as it is")
        elif not args.fixed_point:
            problems.append(f"{' and '.join(quant)} need{'s' if one else ''} --fixed-point")
    if problems:
        raise ValueError("; ".join(problems))
    default = _DEFAULT[args.target]
    what = (f"--out {args.out!r}" if args.out else
            f"RUN_DIR {str(run_dir)!r} (where {default} goes; --out chooses another file)")
    out = check_output_file(args.out or run_dir / default, what, default)

    report = None
    if args.target == "nir":
        from hw_targets.nir import export as to_nir

        graph = to_nir(net, params)
    else:
        import hw_targets.lava as hl

        if fixed and not isinstance(net, LIFLoihi):
            kw = {k: v for k, v in (("vth", args.vth), ("saturate", args.saturate or None)) if v is not None}
            qnet, qparams, report = hl.quantize(net, params, report=True, **kw)
            lava_net = hl.export(qnet, qparams, fixed_point=True)
        else:
            lava_net = hl.export(net, params)  # a lif-loihi network runs in fixed point as it is
    existed = out.exists()
    try:
        if args.target == "nir":
            from hw_targets.nir import write

            write(graph, out)
        else:
            lava_net.save(out)
    except OSError as e:
        raise RunFailed(f"the export ran, but writing {str(out)!r} failed: {os_cause(e)}; "
                        + ("it keeps its previous content" if existed else "nothing was written")
                        + ": free space (or lift the limit) or choose another --out, and run it again",
                        out if existed else None) from e
    if args.target == "nir":
        print(f"{net.name} network ({net.n_in} in, {net.n_hidden} neurons, {net.n_out} out) written to {out} (NIR)")
        return 0
    kind = "fixed point (Loihi's integer model)" if fixed else "floating point"
    print(f"{lava_net.net.name} network for Lava, {kind}, written to {out}")
    if report is not None:
        print(report)
    if not args.verify:
        return 0
    import neuro

    g = torch.Generator().manual_seed(0)
    xs = (torch.rand(args.verify, 1, net.n_in, generator=g, dtype=torch.float64) < 0.05).to(torch.float64)
    got = lava_net.run(xs)
    ref = neuro.simulate(lava_net.net, lava_net.params, xs)
    same = bool(torch.equal(got.spikes, ref.spikes))
    spikes = int(ref.spikes.sum())
    print(f"verify: {args.verify} steps of random spikes (p=0.05): Lava and torch spikes "
          f"{'identical' if same else 'DIFFER'}; {spikes} spikes; "
          f"max |y difference| {float((got.y - ref.y).abs().max()):.3g}")
    if not same:
        return 1
    if spikes == 0:  # identical, and silent in both
        print(f"{PROG}: warning: verify proved nothing: no spike in {args.verify} steps of {lava_net.net.n_hidden} "
              "neurons in either; raise --verify or check that the network fires", file=sys.stderr)
    return 0
