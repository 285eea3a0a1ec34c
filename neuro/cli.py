"""The ``neuro`` command line (``python -m neuro`` too)::

    neuro train --model lif --task add --rule tbptt --steps 2000 --hidden 32 --lr 1e-3 --seed 0 \\
                --run-dir runs/x [--model-opt key=value ...] [--task-opt ...] [--rule-opt ...]
    neuro train --run-dir runs/x --resume [--steps 4000]   # every other setting from runs/x/config.json
    neuro compare --task add --rules bptt,tbptt,uoro --seeds 3 --steps 5000 [--config sweep.toml] \
                  [--out runs/cmp] [--executor local|ray --address auto|HOST:PORT] [--rule-opt tbptt:k=10]
    neuro demo [--quick]
    neuro simulate --backend brian2 [--target numpy|cython|cpp_standalone] --model lif --hidden 100 \\
                   --steps 1000 --rate 50 [--check] [--from-run RUN_DIR] --run-dir runs/sim   # raster.png, trace.npz
    neuro bench NAME [args ...]        # neuro.bench.NAME.main(args)
    neuro export lava|nir RUN_DIR [--out FILE] [--fixed-point [--vth N] [--saturate]] [--verify STEPS]

Usage errors (a wrong name, an invalid size or option, a missing checkpoint) print one line
``neuro: error: ...`` naming the value and the valid choices, exit with status 2 and write nothing.
A run that diverges exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Any, NoReturn, Sequence

__all__ = ["main"]

PROG = "neuro"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (``neuro: error: ...``) and never exit the interpreter."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _error(message: object) -> int:
    text = " ".join(str(message).split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return 2


def _value(text: str) -> Any:
    """``key=value`` values: int, then float, then bool (true/false), none, else the string;
    comma-separated values make a tuple (``isi=24,36``)."""
    if "," in text:
        return tuple(_value(part.strip()) for part in text.split(","))
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    return text


def _options(flag: str, items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} {item!r} is invalid: expected key=value")
        if key in out:
            raise ValueError(f"{flag} {key} is given twice")
        out[key] = _value(value.strip())
    return out


def _parser() -> _Parser:
    p = _Parser(prog=PROG, description="Online learning in recurrent spiking and rate networks.")
    sub = p.add_subparsers(dest="command", metavar="{train,compare,demo,bench,export,simulate}", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a network online on a task with a rule",
                       description="Train a network online; n_in / n_out come from the task.")
    from neuro import cli_train

    cli_train.add_arguments(t)

    c = sub.add_parser("compare", help="train several rules x seeds on one task and compare them with BPTT",
                       description="Every rule x seed trained on the same task, model and budget; a table "
                                   "(mean and standard error across seeds) printed and, with --out, CSV, "
                                   "Markdown and plots written. Values of --config are overridden by flags.")
    c.add_argument("--config", default=None, help="a TOML (or YAML) file with the sweep's settings")
    c.add_argument("--task", default=None, help="neuro.tasks.available() (default add)")
    c.add_argument("--rules", default=None, help="comma-separated rule names (default bptt,tbptt)")
    c.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1; default 3)")
    c.add_argument("--steps", type=int, default=None)
    c.add_argument("--model", default=None, help="models.available() (default rate)")
    c.add_argument("--hidden", type=int, default=None)
    c.add_argument("--lr", type=float, default=None, help="one learning rate for every rule")
    c.add_argument("--optimizer", default=None)
    c.add_argument("--batch", type=int, default=None)
    c.add_argument("--chunk", type=int, default=None)
    c.add_argument("--update-every", type=int, default=None,
                   help="apply the summed estimates every this many steps (default 1; a trial's length on an "
                        "episodic task updates once per trial, as e-prop and BPTT do)")
    c.add_argument("--log-every", type=int, default=None)
    c.add_argument("--align-every", type=int, default=None, help="steps between alignment probes (0: none)")
    c.add_argument("--align-steps", type=int, default=None, help="length of the probe sequence")
    c.add_argument("--eval-steps", type=int, default=None)
    c.add_argument("--dtype", default=None)
    c.add_argument("--executor", default=None, help="local (default) or ray")
    c.add_argument("--address", default=None, help="the Ray cluster: auto or HOST:PORT")
    c.add_argument("--workers", type=int, default=None, help="local processes (0: run in this process)")
    c.add_argument("--out", default=None, help="directory for the runs, tables and plots (resumes a sweep)")
    c.add_argument("--vectorise", action="store_true", default=None,
                   help="run the seeds of bptt/tbptt as one batched computation")
    for what in ("model", "task"):
        c.add_argument(f"--{what}-opt", action="append", metavar="KEY=VALUE", default=None)
    c.add_argument("--schedule", default=None, metavar="TOTAL:PER-STAGE:STEPS",
                   help="a stage schedule for every rule (constructive model; see neuro.staged)")
    c.add_argument("--rule-opt", action="append", metavar="RULE:KEY=VALUE", default=None,
                   help="an option of one rule (repeatable), e.g. tbptt:k=10")

    d = sub.add_parser("demo", help="train a spiking and a rate network on the add task and print a table")
    d.add_argument("--quick", action="store_true", help="a short run (~20 s)")

    b = sub.add_parser("bench", help="run a benchmark: neuro.bench.NAME")
    b.add_argument("name")
    b.add_argument("args", nargs=argparse.REMAINDER)

    e = sub.add_parser("export", help="export a trained lif network (a run directory) to Lava or NIR",
                       description="Read RUN_DIR/config.json and RUN_DIR/checkpoint.pt (written by neuro train) and "
                                   "write the network: lava -> a .npz that hw_targets.lava.LavaNetwork.load runs "
                                   "(floating or fixed point), nir -> a NIR graph (nir.write).")
    e.add_argument("target", help="lava or nir")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--out", default=None, help="output file (default RUN_DIR/lava.npz or RUN_DIR/network.nir)")
    e.add_argument("--fixed-point", action="store_true", help="lava: quantize to Loihi's integer model")
    e.add_argument("--vth", type=int, default=None, help="lava --fixed-point: the threshold mantissa (default 4096)")
    e.add_argument("--saturate", action="store_true", help="lava --fixed-point: clip what does not fit")
    e.add_argument("--verify", type=int, default=0, metavar="STEPS",
                   help="lava: run the export in Lava and in torch on STEPS steps of random spikes and compare")

    s = sub.add_parser("simulate", help="run a network forward (torch or Brian2) and write a raster plot and the trace",
                       description="Simulate a lif/alif (or, with the torch backend, any) network on Poisson input "
                                   "spikes and write RUN_DIR/raster.png and RUN_DIR/trace.npz (spikes, v, y, inputs).")
    s.add_argument("--backend", default="torch", help="neuro.backends.available() (default torch)")
    s.add_argument("--target", default=None, help="brian2: numpy (default), cython or cpp_standalone")
    s.add_argument("--model", default="lif", help="models.available() (default lif)")
    s.add_argument("--hidden", type=int, default=100, help="neurons (default 100)")
    s.add_argument("--inputs", type=int, default=20, help="input channels (default 20)")
    s.add_argument("--steps", type=int, default=1000, help="time steps (default 1000)")
    s.add_argument("--rate", type=float, default=50.0, help="input spikes per channel per second (default 50)")
    s.add_argument("--seed", type=int, default=0, help="parameters and input (default 0)")
    s.add_argument("--from-run", default=None, metavar="RUN_DIR",
                   help="the network and parameters of a neuro train run (config.json, checkpoint.pt) instead")
    s.add_argument("--model-opt", action="append", metavar="KEY=VALUE", default=None,
                   help="a model option (repeatable), e.g. refractory=2; spiking models get excitatory input "
                        "weights |W_in|")
    s.add_argument("--check", action="store_true", help="also run the torch backend and compare the spike trains")
    s.add_argument("--run-dir", default="runs/simulate", help="output directory (default runs/simulate)")
    return p


def _train(args: argparse.Namespace) -> int:
    from neuro import cli_train

    return cli_train.main(args)


def _compare(args: argparse.Namespace) -> int:
    from neuro.comparison import compare
    from neuro.comparison.config import load, validate

    try:
        cfg = load(args.config) if args.config else {}
        flags = {k: getattr(args, k) for k in ("task", "seeds", "steps", "model", "hidden", "lr", "optimizer", "batch",
                                               "chunk", "update_every", "log_every", "align_every", "align_steps", "eval_steps",
                                               "dtype", "executor", "address", "workers", "out", "vectorise",
                                               "schedule")}
        cfg.update({k: v for k, v in flags.items() if v is not None})
        if args.rules is not None:
            cfg["rules"] = [r.strip() for r in args.rules.split(",") if r.strip()]
        for what in ("model", "task"):
            opts = _options(f"--{what}-opt", getattr(args, f"{what}_opt"))
            if opts:
                cfg[f"{what}_options"] = {**cfg.get(f"{what}_options", {}), **opts}
        for item in args.rule_opt or []:
            rule, sep, rest = item.partition(":")
            if not sep or not rule.strip():
                raise ValueError(f"--rule-opt {item!r} is invalid: expected RULE:KEY=VALUE (e.g. tbptt:k=10)")
            opts = cfg.setdefault("rule_options", {}).setdefault(rule.strip(), {})
            opts.update(_options("--rule-opt", [rest]))
        cfg = validate(cfg, "settings")
        cfg.setdefault("task", "add")
        cfg.setdefault("rules", ["bptt", "tbptt"])
        task, rules = cfg.pop("task"), cfg.pop("rules")
        results = compare(task, rules, **cfg)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError, ImportError) as e:
        return _error(e)
    except KeyboardInterrupt:
        where = f"; run the same command again to resume (finished runs are kept in {cfg.get('out')})" \
            if cfg.get("out") else ""
        print(f"{PROG}: interrupted{where}", file=sys.stderr)
        return 130
    print(results.markdown())
    if cfg.get("out"):
        print(f"tables and plots in {cfg['out']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from neuro.demo import run_demo

    run_demo(quick=args.quick)
    return 0


def _bench_names() -> list[str]:
    try:
        import neuro.bench as bench
    except ImportError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def _bench(args: argparse.Namespace) -> int:
    name = args.name
    names = _bench_names()
    if name in ("all", "batch", "rtrl") and names:  # neuro.bench.main's aliases and the quick smoke run
        import neuro.bench as bench

        return int(bench.main([name, *args.args]) or 0)
    if not name.isidentifier() or name not in names:
        valid = [*names, "batch", "rtrl", "all"] if names else []
        return _error(f"bench {name!r} is unknown: valid choices are {', '.join(valid) or '(none installed)'}")
    module = importlib.import_module(f"neuro.bench.{name}")
    if not callable(getattr(module, "main", None)):
        return _error(f"bench {name!r} has no main(argv) function")
    return int(module.main(list(args.args)) or 0)


def _export(args: argparse.Namespace) -> int:
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


def _simulate(args: argparse.Namespace) -> int:
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


def _on_sigterm(signum, frame) -> NoReturn:  # noqa: ARG001
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``neuro`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Every failure ends here as one line on stderr (:mod:`neuro.errors`): 2 for a usage or data error,
    1 for a run that failed after it started (the line says where its last good state is), 130 when
    interrupted (Ctrl-C or SIGTERM). ``NEURO_TRACEBACK=1`` also prints the traceback."""
    import os
    import signal
    import threading

    from neuro import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        return _error(e)
    except SystemExit as e:  # --help
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    command = {"train": _train, "compare": _compare, "demo": _demo, "bench": _bench, "export": _export,
               "simulate": _simulate}[args.command]
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return command(args)
    except SystemExit as e:  # a benchmark's own argparse
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BaseException as e:
        if os.environ.get("NEURO_TRACEBACK"):
            import traceback

            traceback.print_exc()
        status = errors.exit_status(e)
        print(f"{PROG}: {'' if status == errors.INTERRUPTED else 'error: '}{errors.describe(e)}", file=sys.stderr)
        return status
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
