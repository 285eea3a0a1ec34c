"""``neuro simulate``: a network run forward on Poisson input (torch, compiled, Brian2 or Lava); a raster and the trace.

The sizes and the output directory are checked before anything runs; ``trace.npz`` and ``raster.png`` are
written together and atomically (a failed write keeps both previous files). ``--check`` compares with the
torch model of the network the backend ran: for ``lava-fixed`` that is the quantized ``lif-loihi`` network
(Loihi's integer model, bit-exact), not the float network it was quantized from.
"""

from __future__ import annotations

import argparse
import sys

from neuro.cli import PROG, _options

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    import contextlib
    import io as _bytes
    import math
    import time

    import numpy as np
    import torch

    import models
    import neuro
    from neuro.cli_files import check_output_dir, load_run, os_cause, write_files
    from neuro.errors import RunFailed, check_fits

    for flag in ("inputs", "steps") + (("hidden",) if isinstance(args.hidden, int) else ()):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag} {getattr(args, flag)} is invalid: must be a positive integer")
    if not 0.0 <= args.rate <= 1000.0:
        raise ValueError(f"--rate {args.rate} is invalid: spikes per second, between 0 and 1000 (dt = 1 ms)")
    if args.target is not None and args.backend != "brian2":
        raise ValueError(f"--target applies to --backend brian2 only (got --backend {args.backend})")
    neuro.backends.get(args.backend)  # an unknown backend, or one whose package is missing, before anything runs
    out = check_output_dir(args.run_dir, f"--run-dir {args.run_dir!r}")
    model_opt = _options("--model-opt", args.model_opt)
    if args.from_run is not None:
        net, params = load_run(args.from_run, model_opt)
    else:
        for key in ("n_in", "n_hidden", "n_out"):
            if key in model_opt:
                raise ValueError(f"--model-opt {key} is not allowed: use --inputs / --hidden")
        if getattr(args, "connectivity", None) is not None:
            model_opt["connectivity"] = args.connectivity
        net = models.make(args.model, n_in=args.inputs, n_hidden=args.hidden, n_out=1, **model_opt)
        n_params = sum(math.prod(shape) for shape in net.param_shapes().values())
        check_fits(f"--hidden {args.hidden} with --inputs {args.inputs}", 8 * n_params,
                   "choose fewer --hidden or --inputs")
        params = net.init_params(seed=args.seed, dtype=torch.float64)
        if net.spiking:  # excitatory input (a stack's input reaches its first layer)
            key = "W_in" if "W_in" in params else "0.W_in"
            params[key] = params[key].abs()
    # the trace: inputs, and about five recorded [steps, hidden] variables in float64, kept twice while written
    check_fits(f"--steps {args.steps} with --hidden {net.n_hidden}", 8 * args.steps * (net.n_in + 10 * net.n_hidden),
               "choose fewer --steps or --hidden")
    g = torch.Generator().manual_seed(args.seed)
    dt = float(getattr(net, "dt", 1.0))
    xs = (torch.rand(args.steps, 1, net.n_in, generator=g, dtype=torch.float64)
          < args.rate * dt * 1e-3).to(torch.float64)
    kw = {"target": args.target} if args.target is not None else {}
    t0 = time.perf_counter()
    tr = neuro.simulate(net, params, xs, backend=args.backend, **kw)
    wall = time.perf_counter() - t0

    arrays = {"xs": xs[:, 0].numpy(), "y": tr.y[:, 0].numpy()}
    for name, value in (("spikes", tr.spikes), ("v", tr.v), ("h", tr.h), *tr.extra.items()):
        if value is not None:
            arrays[name] = value[:, 0].numpy()
    buf = _bytes.BytesIO()
    np.savez_compressed(buf, **arrays, dt_ms=np.float64(dt))
    files = {out / "trace.npz": buf.getvalue()}
    where = f"{args.backend}" + (f" ({args.target or 'numpy'})" if args.backend == "brian2" else "")
    line = f"{net.name}, {net.n_hidden} neurons, {args.steps} steps in {wall:.2f} s on {where}"
    if tr.spikes is not None:
        s = tr.spikes[:, 0]
        hz = float(s.mean()) / (dt * 1e-3)
        files[out / "raster.png"] = _raster(s, dt, net.n_hidden, f"{line}: {hz:.1f} Hz")
        line += f", {int(s.sum())} spikes ({hz:.1f} Hz)"
    new_dirs = [d for d in (out, *out.parents) if not d.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_files(files)
    except OSError as e:
        for d in new_dirs:  # no empty directory left behind
            with contextlib.suppress(OSError):
                d.rmdir()
        kept = [p.name for p in files if p.exists()]
        if not kept:
            what = "nothing was written"
        else:
            what = f"{' and '.join(kept)} there keep{'s its' if len(kept) == 1 else ' their'} previous content"
        raise RunFailed(f"the simulation ran, but writing to {str(out)!r} failed: {os_cause(e)}; {what}: free space "
                        "(or lift the limit) or choose another --run-dir, and run it again", out if kept else None) from e
    print(line)
    if tr.spikes is not None and not bool(tr.spikes.any()):  # a silent network: say so, keep the exit status
        hint = "" if args.from_run else ": raise --rate or the drive (--model-opt input_scale=, bias_mean=)"
        print(f"{PROG}: warning: the network is silent, no spike in {args.steps} steps of {net.n_hidden} neurons"
              + hint, file=sys.stderr)
    print("wrote " + " and ".join(str(p) for p in files))
    if args.check and args.backend != "torch":
        return _check(args.backend, net, params, xs, tr)
    return 0


def _raster(s, dt: float, n: int, title: str) -> bytes:
    """The raster plot of spikes ``s`` [T, n] as PNG bytes."""
    import io as _bytes

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    t_idx, n_idx = torch.nonzero(s, as_tuple=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    try:
        ax.scatter((t_idx.double() * dt).numpy(), n_idx.numpy(), s=1.5, c="k", marker="|")
        ax.set(xlabel="time (ms)", ylabel="neuron", xlim=(0, s.shape[0] * dt), ylim=(-0.5, n - 0.5), title=title)
        fig.tight_layout()
        buf = _bytes.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _check(backend: str, net, params, xs, tr) -> int:
    """Compare ``tr`` with the torch model of what ``backend`` ran; 1 if they differ. ``lava-fixed`` runs the
    quantized network (``lif-loihi``, integer units of v), so that is the reference, not the float one."""
    import torch

    import neuro

    what = "torch (float64)"
    if backend in ("lava", "lava-fixed"):
        import hw_targets.lava as hl

        ran = hl.export(net, params, fixed_point=backend == "lava-fixed")
        if ran.net is not net:
            what = f"torch (float64) on the quantized {ran.net.name!r} network that {backend} runs"
        net, params = ran.net, {k: v.to(torch.float64) for k, v in ran.params.items()}
    ref = neuro.simulate(net, params, xs)
    if ref.spikes is not None:
        same = bool(torch.equal(ref.spikes, tr.spikes))
        dv = float(((tr.v - ref.v).abs().max() / ref.v.abs().max().clamp_min(1e-300))) if ref.v is not None else None
        print(f"check against {what}: spike trains {'identical' if same else 'DIFFER'}"
              + (f", max relative voltage difference {dv:.2e}" if dv is not None else ""))
    else:  # a rate model: its activity and readout, to rounding
        dh = float((tr.h - ref.h).abs().max())
        dy = float((tr.y - ref.y).abs().max())
        same = dh <= 1e-9 and dy <= 1e-9
        print(f"check against {what}: h and y {'agree' if same else 'DIFFER'} (max |difference| "
              f"{dh:.2e} and {dy:.2e})")
    return 0 if same else 1
