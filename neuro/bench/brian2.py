"""``neuro bench brian2``: the Brian2 backend, speed per target next to torch, and training through it.

Speed (default): the network of ``neuro bench sim`` (:func:`neuro.bench.sim.build_lif`: recurrent LIF, dense
``W_rec``, Poisson input, ~13 Hz, batch 1, T steps) in float64 through ``neuro.simulate`` with the torch
backend and with ``backend="brian2"`` for each target (``numpy``, ``cython``, ``cpp_standalone``; spikes only
recorded, ``record=False``). For each target two figures, separately: ``first_s``, the first call (building the
Brian2 objects, generating code, compiling: Cython modules cached in ``~/.cython`` survive between processes,
so a cold first call is slower than the one measured when the cache is warm; the cpp_standalone project is
built in a fresh temporary directory every run of this benchmark), and ``run_s``, the median of ``--repeats``
later calls with the build reused (new weights and inputs would not rebuild). Every Brian2 spike train is
checked against torch's (``identical``). Torch threads: ``--threads``; Brian2 runs one thread.

Training (``--train``): node perturbation (``np``) trains a small ``lif`` network whose forward passes all run
in Brian2 (:class:`neuro.backends.brian2.Brian2Forward`) on a teacher-student task (a 20-channel frozen Poisson
pattern; the target is the output of the same network with other random weights, so that it is reachable;
T steps per epoch, mse), against the same training with torch forward passes (same seed: the curves must
coincide). Writes ``brian2_train.png`` (loss per epoch, output before and
after) and the figures into the JSON.

Results: ``OUT/bench_brian2.json`` and ``OUT/bench_brian2.md`` (written atomically; the table is printed).

:class:`StandaloneLIF` is the network as a Brian2 user writes it, for ``neuro bench sim --sparse``: a
``NeuronGroup`` of current-based LIF neurons, ``PoissonGroup`` inputs and ``Synapses`` created only where they
exist (``connect(i=..., j=...)``), built for cpp_standalone and timed by Brian2's own clock.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import _report

__all__ = ["StandaloneLIF", "main", "run_speed", "run_train"]

TARGETS = ("numpy", "cython", "cpp_standalone")


def run_speed(sizes=(256, 1024, 4096), steps: int = 1000, repeats: int = 3, threads: int = 1,
              targets=TARGETS, log: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    import neuro
    from neuro.backends import brian2 as b2b

    from .sim import build_lif

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for n in sizes:
            net, params, xs = build_lif(n, steps)
            params = {k: v.double() for k, v in params.items()}
            xs = xs.double()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ref = neuro.simulate(net, params, xs)
                ts.append(time.perf_counter() - t0)
            hz = float(ref.spikes.mean()) * 1000.0 / net.dt
            rows.append({"n": n, "backend": "torch", "target": None, "first_s": None, "run_s": statistics.median(ts),
                         "steps_per_s": steps / statistics.median(ts), "rate_hz": hz, "identical": True})
            log(f"N={n} torch: {steps / statistics.median(ts):.0f} steps/s ({hz:.1f} Hz)")
            for target in targets:
                b2b.clear_cache()
                try:
                    t0 = time.perf_counter()
                    tr = neuro.simulate(net, params, xs, backend="brian2", target=target, record=False)
                    first = time.perf_counter() - t0
                    same = bool(torch.equal(tr.spikes, ref.spikes))
                    ts, inner = [], []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        neuro.simulate(net, params, xs, backend="brian2", target=target, record=False)
                        ts.append(time.perf_counter() - t0)
                        inner.append(b2b.last_run_s)
                    run = statistics.median(ts)
                    net_run = statistics.median(inner) if None not in inner else None
                    rows.append({"n": n, "backend": "brian2", "target": target, "first_s": first, "run_s": run,
                                 "build_s": first - run, "steps_per_s": steps / run, "rate_hz": hz, "identical": same,
                                 "network_run_s": net_run,
                                 "network_steps_per_s": None if not net_run else steps / net_run})
                    log(f"N={n} brian2 {target}: first call {first:.2f} s, then {run:.3f} s "
                        f"({steps / run:.0f} steps/s; Brian2's network run alone {net_run}), spikes identical to "
                        f"torch: {same}")
                except Exception as e:  # a target that cannot run here is recorded, not fatal
                    rows.append({"n": n, "backend": "brian2", "target": target, "error": f"{type(e).__name__}: {e}"})
                    log(f"N={n} brian2 {target}: {type(e).__name__}: {e}")
            b2b.clear_cache()
    finally:
        torch.set_num_threads(prev)
    return rows


class StandaloneLIF:
    """The recurrent LIF ``net`` (``lif``, exact dynamics, subtractive reset, ``b = 0``) as a Brian2 user writes
    it, built once for cpp_standalone in a temporary directory (removed by :meth:`close`)::

        G = NeuronGroup(N, "dv/dt = (v_leak - v + isyn) / tau_mem : 1
                            disyn/dt = -isyn / tau_syn : 1", threshold="v > v_th", reset="v -= v_th",
                        method="exact")
        P = PoissonGroup(n_in, input_hz * Hz)
        S_in = Synapses(P, G, "w : 1", on_pre="isyn_post += w"); S_in.connect(i=pre, j=post)   # W_in's synapses
        S_rec = Synapses(G, G, "w : 1", on_pre="isyn_post += w"); S_rec.connect(i=pre, j=post)  # W_rec's

    ``w_in`` [N, n_in] and ``w_rec`` [N, N]: the synapses are their nonzero entries (``connect(i=..., j=...)``:
    only those that exist; a one-to-one input is N synapses). The same equations, weights and input rate as the
    network of ``neuro.simulate``; the Poisson spikes are Brian2's own (the same rate, not the same trains).
    Attributes after the build: ``first_s`` (code generation, compilation and the first run), ``rate_hz`` (of
    that run), ``synapses``. Calling it runs the compiled program once more and returns Brian2's own timer around
    the network run (last_run_info.txt: no build, no file input or output), in seconds."""

    def __init__(self, net, w_in, w_rec, input_hz: float, steps: int):
        import tempfile

        import brian2 as b2
        import numpy as np
        from brian2.devices.device import get_device, reset_device, set_device

        w_in, w_rec = np.asarray(w_in, np.float64), np.asarray(w_rec, np.float64)
        n, n_in = w_in.shape
        self.dir = tempfile.mkdtemp(prefix="neuro_bench_b2_")
        set_device("cpp_standalone", directory=self.dir, build_on_run=False)
        dev = get_device()
        try:
            dt = net.dt * b2.ms
            ns = {"v_leak": float(net.v_leak), "v_th": float(net.v_th), "tau_mem": net.tau_mem * b2.ms,
                  "tau_syn": net.tau_syn * b2.ms}
            G = b2.NeuronGroup(n, "dv/dt = (v_leak - v + isyn) / tau_mem : 1\ndisyn/dt = -isyn / tau_syn : 1",
                               threshold="v > v_th", reset="v -= v_th", method="exact", namespace=ns, dt=dt)
            G.v = float(net.v_leak)
            P = b2.PoissonGroup(n_in, input_hz * b2.Hz, dt=dt)
            objs = [G, P]
            self.synapses = 0
            for src, mat in ((P, w_in), (G, w_rec)):
                pre, post = np.nonzero(mat.T)  # ordered by presynaptic unit, as connect(p=...) creates them
                S = b2.Synapses(src, G, "w : 1", on_pre="isyn_post += w", dt=dt, namespace={})
                S.connect(i=pre.astype(np.int32), j=post.astype(np.int32))
                S.w = mat[post, pre]
                objs.append(S)
                self.synapses += len(pre)
            mon = b2.SpikeMonitor(G, record=False)
            network = b2.Network(*objs, mon)
            network.run(steps * dt)
            t0 = time.perf_counter()
            dev.build(directory=self.dir, compile=True, run=True, with_output=False)
            self.first_s = time.perf_counter() - t0
            self.rate_hz = float(mon.num_spikes) / (n * steps * net.dt * 1e-3)
            run_cmd = b2.prefs.devices.cpp_standalone.run_cmd_unix
            self.cmd = [run_cmd] if isinstance(run_cmd, str) else list(run_cmd)
        except BaseException:
            self.close()
            raise
        finally:
            dev.reinit()
            reset_device()

    def __call__(self) -> float:
        import os
        import shutil
        import subprocess

        res = os.path.join(self.dir, "results_bench")
        shutil.rmtree(res, ignore_errors=True)
        os.makedirs(res)
        subprocess.run(self.cmd + ["--results_dir", res + os.sep], cwd=self.dir, check=True, capture_output=True)
        with open(os.path.join(res, "last_run_info.txt")) as fh:
            return float(fh.read().split()[0])

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def _teacher(net, seed: int) -> dict[str, torch.Tensor]:
    p = net.init_params(seed=seed, dtype=torch.float64)
    p["W_in"] = p["W_in"].abs()  # excitatory input, so that the frozen pattern makes the network fire
    return p


def _train_task(net, steps: int, seed: int = 0):
    """A frozen Poisson pattern xs [T, 1, 20] and the teacher's output ys [T, 1, 1] (weights of seed + 1)."""
    import neuro

    g = torch.Generator().manual_seed(seed)
    xs = (torch.rand(steps, 1, 20, generator=g, dtype=torch.float64) < 0.1).to(torch.float64)
    return xs, neuro.simulate(net, _teacher(net, seed + 1), xs).y


def run_train(epochs: int = 60, steps: int = 40, hidden: int = 20, lr: float = 3e-4, sigma: float = 1e-2,
              samples: int = 16, target: str = "numpy", seed: int = 0,
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Node perturbation with forward passes in Brian2 and, for comparison, in torch: losses per epoch."""
    import models
    import neuro
    from neuro.backends.brian2 import Brian2Forward

    net = models.make("lif", n_in=20, n_hidden=hidden, n_out=1, input_scale=4.0)
    p0 = _teacher(net, seed)
    xs, ys = _train_task(net, steps, seed)
    one = torch.ones(1, dtype=torch.float64)

    def train(forward):
        rule = neuro.rules.make("np", net, sigma=sigma, samples=samples, forward=forward, window=1)  # a grad every step
        q = {k: v.clone() for k, v in p0.items()}
        losses, t0 = [], time.perf_counter()
        for epoch in range(epochs):
            state = rule.init(q, 1, seed=seed * 1000 + epoch)
            grads = {k: torch.zeros_like(v) for k, v in q.items()}
            total = 0.0
            for x, y in zip(xs, ys):
                out = rule.step(q, state, x, y, one)
                state, total = out.state, total + float(out.loss)
                for k in grads:
                    grads[k] += out.grad[k]
            losses.append(total / steps)
            q = {k: v - lr * grads[k] for k, v in q.items()}
            if epoch % 10 == 0 or epoch == epochs - 1:
                log(f"{'torch' if forward is None else 'brian2 ' + target} epoch {epoch}: loss {total / steps:.4f}")
        return q, losses, time.perf_counter() - t0

    q_b2, l_b2, wall_b2 = train(Brian2Forward(net, target=target))
    q_t, l_t, wall_t = train(None)
    y0 = neuro.simulate(net, p0, xs).y[:, 0, 0]
    y1 = neuro.simulate(net, q_b2, xs, backend="brian2").y[:, 0, 0]
    max_param_diff = max(float((q_b2[k] - q_t[k]).abs().max()) for k in q_t)
    return {"settings": {"model": "lif", "hidden": hidden, "n_in": 20, "steps": steps, "epochs": epochs, "lr": lr,
                         "rule": "np", "sigma": sigma, "samples": samples, "target": target, "seed": seed,
                         "task": "teacher-student: frozen Poisson pattern (20 channels, p=0.1) -> the output of the "
                                 "same lif network with the weights of seed + 1, mse"},
            "loss_brian2": l_b2, "loss_torch": l_t, "wall_s_brian2": wall_b2, "wall_s_torch": wall_t,
            "max_param_diff": max_param_diff, "y_before": y0.tolist(), "y_after": y1.tolist(),
            "y_target": ys[:, 0, 0].tolist()}


def plot_train(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["settings"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(res["loss_torch"], "C0-", lw=3, alpha=0.4, label="torch forward passes")
    a.plot(res["loss_brian2"], "C3.", ms=4, label=f"Brian2 forward passes ({s['target']})")
    a.set(xlabel="epoch", ylabel="mse per step", yscale="log", title=f"node perturbation, lif {s['hidden']} neurons")
    a.legend()
    b.plot(res["y_target"], "k--", label="target")
    b.plot(res["y_before"], "C7", label="before")
    b.plot(res["y_after"], "C3", label=f"after {s['epochs']} epochs (Brian2)")
    b.set(xlabel="step (ms)", ylabel="y", title="readout")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    out = ["# neuro bench brian2", "",
           f"{m['date']} · {m['cpu_model']} · {m['cores']} cores · torch {m['torch']} · brian2 {res['brian2']} · "
           f"load average {m.get('loadavg_start')} at the start, {m.get('loadavg_end')} at the end", ""]
    if res.get("speed"):
        s = res["speed_settings"]
        out += [f"## Speed: recurrent LIF of `neuro bench sim`, float64, batch 1, T = {s['steps']}, "
                f"median of {s['repeats']} runs; torch {s['threads']} thread(s), Brian2 one", "",
                "first call = build + code generation + compile + one run (Cython: with the modules cached in "
                "~/.cython by earlier runs, if any); run = a later call, build reused.", ""]
        rows = []
        for r in res["speed"]:
            name = "torch (neuro.simulate)" if r["backend"] == "torch" else f"brian2 {r['target']}"
            if "error" in r:
                rows.append([r["n"], name, "–", "–", "–", "–", "–", r["error"]])
                continue
            first = "–" if r["first_s"] is None else f"{r['first_s']:.2f} s"
            inner = r.get("network_steps_per_s")
            rows.append([r["n"], name, first, f"{r['run_s']:.3f} s", _report.fmt_rate(r["steps_per_s"]),
                         "–" if not inner else _report.fmt_rate(inner), f"{r['rate_hz']:.1f} Hz",
                         "yes" if r["identical"] else "NO"])
        out.append(_report.md_table(["N", "simulator", "first call", "run", "steps/s (call)",
                                     "steps/s (Brian2 network run alone)", "rate", "spikes = torch"], rows))
        out += ["", "steps/s (call): T / wall time of a whole `neuro.simulate` call (for cpp_standalone: writing "
                "weights and inputs, starting the program, reading the results back). Brian2 network run alone: "
                "Brian2's own timer around the run loop (cpp_standalone: last_run_info.txt; runtime targets: the "
                "device's last run time), the figure comparable to the reference in the issue (48k steps/s at "
                "N = 1024, 2.9k at N = 4096, cpp_standalone)."]
    if res.get("train"):
        t = res["train"]
        s = t["settings"]
        out += ["", "## Forward-only training through Brian2", "",
                f"{s['rule']} (sigma {s['sigma']}, {s['samples']} samples), lif {s['hidden']} neurons, task: "
                f"{s['task']}, T = {s['steps']}, {s['epochs']} epochs, lr {s['lr']}, every forward pass in Brian2 "
                f"({s['target']}, one step per program run).", "",
                f"loss (mse per step): {t['loss_brian2'][0]:.4f} at the start, {min(t['loss_brian2']):.4f} best, "
                f"{t['loss_brian2'][-1]:.4f} at the end; the same training with torch forward passes: "
                f"{t['loss_torch'][-1]:.4f} at the end, largest parameter difference {t['max_param_diff']:.1e}. "
                f"Wall time: Brian2 {t['wall_s_brian2']:.0f} s, torch {t['wall_s_torch']:.1f} s.", "",
                "![training through Brian2](brian2_train.png)"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neuro bench brian2", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; Brian2 runs one)")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--train", action="store_true", help="also the forward-only training run and its figure")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed table")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--train-target", default="numpy", help="the Brian2 target of the training run (default numpy)")
    ap.add_argument("--quick", action="store_true", help="tiny settings: N 64, 200 steps, 1 repeat, numpy only")
    ap.add_argument("--out", default="runs/bench")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.steps, a.repeats, a.targets, a.epochs, a.train_target = [64], 200, 1, ["numpy"], 3, "numpy"
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    res: dict[str, Any] = {"benchmark": "brian2", "brian2": _report._version("brian2"),
                           "machine": {**_report.machine_info(a.threads), "loadavg_start": _report.loadavg()}}
    if not a.no_speed:
        res["speed_settings"] = {"sizes": a.sizes, "steps": a.steps, "repeats": a.repeats, "threads": a.threads,
                                 "targets": a.targets}
        res["speed"] = run_speed(a.sizes, a.steps, a.repeats, a.threads, a.targets, log)
    out = Path(a.out)
    if a.train:
        res["train"] = run_train(epochs=a.epochs, target=a.train_target, log=log)
        out.mkdir(parents=True, exist_ok=True)
        plot_train(res["train"], out / "brian2_train.png")
    res["machine"]["loadavg_end"] = _report.loadavg()
    res["command"] = ["neuro", "bench", "brian2", *(argv if argv is not None else sys.argv[1:])]
    md = to_markdown(res)
    _report.write_json(out / "bench_brian2.json", res)
    _report.write_atomic(out / "bench_brian2.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
