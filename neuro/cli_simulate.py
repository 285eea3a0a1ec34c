"""``neuro simulate``: a network run forward on Poisson input (torch, compiled or Brian2); a raster and the trace."""

from __future__ import annotations

import argparse
import sys

from neuro.cli import PROG, _error, _options

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import numpy as np
    import torch

    import models
    import neuro
    from neuro import io

    try:
        for flag in ("hidden", "inputs", "steps"):
            if getattr(args, flag) <= 0:
                raise ValueError(f"--{flag} {getattr(args, flag)} is invalid: must be a positive integer")
        if not 0.0 <= args.rate <= 1000.0:
            raise ValueError(f"--rate {args.rate} is invalid: spikes per second, between 0 and 1000 (dt = 1 ms)")
        if args.target is not None and args.backend != "brian2":
            raise ValueError(f"--target applies to --backend brian2 only (got --backend {args.backend})")
        model_opt = _options("--model-opt", args.model_opt)
        if args.from_run is not None:
            run = Path(args.from_run)
            if not (run / "config.json").is_file():
                raise FileNotFoundError(f"{str(run / 'config.json')!r} does not exist: --from-run must be a "
                                        "directory written by neuro train --run-dir")
            config = io.read_json(run / "config.json")
            net = models.make(config["net"]["name"], **{**config["net"]["fields"], **model_opt})
            params = io.load_checkpoint(run / "checkpoint.pt", map_location="cpu")["params"]
            params = {k: v.detach().to(torch.float64) for k, v in params.items()}
        else:
            for key in ("n_in", "n_hidden", "n_out"):
                if key in model_opt:
                    raise ValueError(f"--model-opt {key} is not allowed: use --inputs / --hidden")
            net = models.make(args.model, n_in=args.inputs, n_hidden=args.hidden, n_out=1, **model_opt)
            params = net.init_params(seed=args.seed, dtype=torch.float64)
            if net.spiking:
                params["W_in"] = params["W_in"].abs()
        g = torch.Generator().manual_seed(args.seed)
        dt = float(getattr(net, "dt", 1.0))
        xs = (torch.rand(args.steps, 1, net.n_in, generator=g, dtype=torch.float64)
              < args.rate * dt * 1e-3).to(torch.float64)
        kw = {"target": args.target} if args.target is not None else {}
        t0 = time.perf_counter()
        tr = neuro.simulate(net, params, xs, backend=args.backend, **kw)
        wall = time.perf_counter() - t0
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError, RuntimeError) as e:
        return _error(e)
    out = Path(args.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"xs": xs[:, 0].numpy(), "y": tr.y[:, 0].numpy()}
    for name, value in (("spikes", tr.spikes), ("v", tr.v), ("h", tr.h), *tr.extra.items()):
        if value is not None:
            arrays[name] = value[:, 0].numpy()
    np.savez_compressed(out / "trace.npz", **arrays, dt_ms=np.float64(dt))
    where = f"{args.backend}" + (f" ({args.target or 'numpy'})" if args.backend == "brian2" else "")
    line = f"{net.name}, {net.n_hidden} neurons, {args.steps} steps in {wall:.2f} s on {where}"
    if tr.spikes is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = tr.spikes[:, 0]
        hz = float(s.mean()) / (dt * 1e-3)
        t_idx, n_idx = torch.nonzero(s, as_tuple=True)
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.scatter((t_idx.double() * dt).numpy(), n_idx.numpy(), s=1.5, c="k", marker="|")
        ax.set(xlabel="time (ms)", ylabel="neuron", xlim=(0, args.steps * dt), ylim=(-0.5, net.n_hidden - 0.5),
               title=f"{line}: {hz:.1f} Hz")
        fig.tight_layout()
        fig.savefig(out / "raster.png", dpi=120)
        plt.close(fig)
        line += f", {int(s.sum())} spikes ({hz:.1f} Hz)"
    print(line)
    if tr.spikes is not None and not bool(tr.spikes.any()):  # a silent network: say so, keep the exit status
        hint = "" if args.from_run else ": raise --rate or the drive (--model-opt input_scale=, bias_mean=)"
        print(f"{PROG}: warning: the network is silent, no spike in {args.steps} steps of {net.n_hidden} neurons"
              + hint, file=sys.stderr)
    print(f"wrote {out / 'trace.npz'}" + (f" and {out / 'raster.png'}" if tr.spikes is not None else ""))
    if args.check and args.backend != "torch":
        ref = neuro.simulate(net, params, xs)
        if ref.spikes is not None:
            same = bool(torch.equal(ref.spikes, tr.spikes))
            dv = float(((tr.v - ref.v).abs().max() / ref.v.abs().max().clamp_min(1e-300))) if ref.v is not None else None
            print(f"check against torch (float64): spike trains {'identical' if same else 'DIFFER'}"
                  + (f", max relative voltage difference {dv:.2e}" if dv is not None else ""))
        else:  # a rate model: its activity and readout, to rounding
            dh = float((tr.h - ref.h).abs().max())
            dy = float((tr.y - ref.y).abs().max())
            same = dh <= 1e-9 and dy <= 1e-9
            print(f"check against torch (float64): h and y {'agree' if same else 'DIFFER'} (max |difference| "
                  f"{dh:.2e} and {dy:.2e})")
        if not same:
            return 1
    return 0
