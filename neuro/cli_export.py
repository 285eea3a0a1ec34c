"""``neuro export lava|nir RUN_DIR``: a trained network to Lava (float or Loihi fixed point) or NIR."""

from __future__ import annotations

import argparse

from neuro.cli import _error

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    import models
    from neuro import io

    targets = ("lava", "nir")
    run_dir = Path(args.run_dir)
    try:
        if args.target not in targets:
            raise ValueError(f"export target {args.target!r} is invalid: valid choices are {', '.join(targets)}")
        if args.target == "nir" and (args.fixed_point or args.vth is not None or args.saturate or args.verify):
            raise ValueError("--fixed-point, --vth, --saturate and --verify apply to lava only")
        if args.verify < 0:
            raise ValueError(f"--verify {args.verify} is invalid: must be >= 0")
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{str(config_path)!r} does not exist: RUN_DIR must be a directory written by "
                                    "neuro train --run-dir")
        config = io.read_json(config_path)
        net = models.make(config["net"]["name"], **config["net"]["fields"])
        params = io.load_checkpoint(run_dir / "checkpoint.pt", map_location="cpu")["params"]
        params = {k: v.detach().to(torch.float64) for k, v in params.items()}
        if args.target == "nir":
            from hw_targets.nir import export as to_nir

            out = Path(args.out or run_dir / "network.nir")
            to_nir(net, params, out)
            print(f"{net.name} network ({net.n_in} in, {net.n_hidden} neurons, {net.n_out} out) written to {out} (NIR)")
            return 0
        import hw_targets.lava as hl

        kw = {k: v for k, v in (("vth", args.vth), ("saturate", args.saturate or None)) if v is not None}
        if kw and not args.fixed_point:
            raise ValueError("--vth and --saturate need --fixed-point")
        report = None
        if args.fixed_point:
            qnet, qparams, report = hl.quantize(net, params, report=True, **kw)
            lava_net = hl.export(qnet, qparams, fixed_point=True)
        else:
            lava_net = hl.export(net, params)
        out = lava_net.save(args.out or run_dir / "lava.npz")
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as e:
        return _error(e)
    kind = "fixed point (Loihi's integer model)" if args.fixed_point else "floating point"
    print(f"{lava_net.net.name} network for Lava, {kind}, written to {out}")
    if report is not None:
        print(report)
    if args.verify:
        import neuro

        g = torch.Generator().manual_seed(0)
        xs = (torch.rand(args.verify, 1, net.n_in, generator=g, dtype=torch.float64) < 0.05).to(torch.float64)
        got = lava_net.run(xs)
        ref = neuro.simulate(lava_net.net, lava_net.params, xs)
        same = bool(torch.equal(got.spikes, ref.spikes))
        print(f"verify: {args.verify} steps of random spikes (p=0.05): Lava and torch spikes "
              f"{'identical' if same else 'DIFFER'}; {int(ref.spikes.sum())} spikes; "
              f"max |y difference| {float((got.y - ref.y).abs().max()):.3g}")
        if not same:
            return 1
    return 0
