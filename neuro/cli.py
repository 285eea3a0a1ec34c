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

Every failure is one line on stderr, ``neuro: error: ...`` (:mod:`neuro.errors`), never a traceback:
a usage or data error (a wrong name, an invalid size or option, a size that does not fit in memory, a
missing, corrupt or read-only file or directory) names the value and the valid choices, exits with status
2 and writes nothing; a run that fails after it started (it diverged, the disk filled) exits with status
1 and says where its last good checkpoint is and how to continue; Ctrl-C or SIGTERM exits with 130.
``NEURO_TRACEBACK=1`` also prints the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
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


def _tuples(v: Any) -> Any:
    """A parsed JSON value with its lists as tuples (as a comma-separated value gives them)."""
    if isinstance(v, list):
        return tuple(_tuples(u) for u in v)
    if isinstance(v, dict):
        return {k: _tuples(u) for k, u in v.items()}
    return v


def hidden_sizes(text: str) -> int | tuple[int, ...]:
    """``--hidden``: ``64`` (one layer) or ``64,64`` (a stack of those layers, :mod:`models.stack`)."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(k <= 0 for k in sizes):
        raise argparse.ArgumentTypeError(f"--hidden {text} is invalid: expected a positive integer, or positive "
                                         "integers separated by commas (units per layer of a stack, e.g. 64,64)")
    return sizes[0] if len(sizes) == 1 else sizes


def connectivity_rule(text: str) -> float | str:
    """``--connectivity``: a connection probability ``P`` in (0, 1] for the recurrent (and, in a stack, the
    between-layer) matrices, or a rule of :mod:`neuro.connectivity` (``fan-in:16``)."""
    from neuro import connectivity

    try:
        value: float | str = float(text)
    except ValueError:
        value = text
    try:
        connectivity.normalise(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--connectivity {text} is invalid: expected a connection probability in "
                                         "(0, 1], or 'random:P', 'fan-in:K' or 'one-to-one' (optionally '@seed')") from None
    return value


def _value(text: str) -> Any:
    """``key=value`` values: a JSON object or list if it starts with ``{`` or ``[`` (``rule_options={"k": 2}``;
    lists become tuples), else int, then float, then bool (true/false), none, else the string;
    comma-separated values make a tuple (``isi=24,36``)."""
    if text[:1] in ("{", "["):
        try:
            return _tuples(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"{text!r} is not valid JSON ({e.msg} at character {e.pos})") from None
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
        try:
            out[key] = _value(value.strip())
        except ValueError as e:
            raise ValueError(f"{flag} {key}={value.strip()} is invalid: {e}") from None
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
    c.add_argument("--hidden", type=hidden_sizes, default=None, help="units, or units per layer of a stack (64,64)")
    c.add_argument("--connectivity", type=connectivity_rule, default=None,
                   help="connection probability of the recurrent and between-layer synapses (default 1: dense)")
    c.add_argument("--lr", type=float, default=None, help="one learning rate for every rule")
    c.add_argument("--optimizer", default=None)
    c.add_argument("--optimizer-opt", action="append", metavar="KEY=VALUE",
                   help="an option of the optimizer (repeatable; td-rmsprop: beta2, eps, init, readout_scale)")
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
    s.add_argument("--hidden", type=hidden_sizes, default=100, help="neurons, or per layer of a stack (default 100)")
    s.add_argument("--connectivity", type=connectivity_rule, default=None,
                   help="connection probability of the recurrent and between-layer synapses (default 1: dense)")
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
    from neuro import cli_compare

    return cli_compare.main(args)


def _export(args: argparse.Namespace) -> int:
    from neuro import cli_export

    return cli_export.main(args)


def _simulate(args: argparse.Namespace) -> int:
    from neuro import cli_simulate

    return cli_simulate.main(args)


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


def _on_sigterm(signum, frame) -> NoReturn:  # noqa: ARG001
    raise KeyboardInterrupt


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """A warning as one line ``neuro: warning: ...`` (not Python's two lines with a source path)."""
    text = " ".join(str(message).split())
    print(f"{PROG}: warning: {text}", file=sys.stderr if file is None else file)


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
    import warnings

    shown = warnings.showwarning
    warnings.showwarning = _show_warning
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
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
