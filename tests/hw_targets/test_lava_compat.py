"""hw_targets.lava._compat: lava-nc 0.10.0 under Python 3.11, through an import hook.

Anything that imports lava (or needs a fresh interpreter) runs in a subprocess with a timeout: lava's
runtime forks processes, and a fresh interpreter is the only way to see the import fail and then pass.
"""

from __future__ import annotations

import importlib
import json
import os
import py_compile
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hw_targets.lava import _compat

pytestmark = pytest.mark.skipif(_compat.lava_version() is None, reason="lava-nc is not installed")

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_plain_import_fails_and_hook_fixes_it() -> None:
    plain = run_python("import lava.magma.compiler.var_model")
    hooked = run_python("""
        import hw_targets.lava as hl
        print(hl.ensure_lava())
        from lava.proc.lif.process import LIF
        from lava.magma.compiler.var_model import ByteEncoder, CoreEncoder
        assert hash(CoreEncoder().x) == hash(ByteEncoder())
    """)
    assert hooked.returncode == 0, hooked.stderr
    assert hooked.stdout.split() == [_compat.SUPPORTED_VERSION]
    if plain.returncode == 0:
        pytest.skip(f"lava.magma.compiler.var_model imports without the hook on Python "
                    f"{sys.version.split()[0]}: the hook is not needed here")
    assert "mutable default" in plain.stderr and "ByteEncoder" in plain.stderr, plain.stderr


def test_hw_targets_imports_no_lava() -> None:
    out = run_python("""
        import sys, hw_targets, hw_targets.lava
        print(sorted(m for m in sys.modules if m == "lava" or m.startswith("lava.")))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_install_is_idempotent() -> None:
    def finders() -> int:
        return sum(getattr(f, "_neuro_lava_compat", False) for f in sys.meta_path)

    assert _compat.install() is True and _compat.install() is True
    assert finders() == 1
    assert isinstance(sys.meta_path[0], _compat._VarModelFinder)
    assert _compat.ensure_lava() == _compat.ensure_lava() == _compat.SUPPORTED_VERSION
    module = sys.modules[_compat.TARGET_MODULE]
    assert _compat.ensure_lava() and sys.modules[_compat.TARGET_MODULE] is module  # not re-executed
    assert finders() == 1
    # The finder answers for the one module only.
    assert sys.meta_path[0].find_spec("json", None) is None
    assert sys.meta_path[0].find_spec("lava.magma.compiler.compiler", None) is None


def test_module_comes_from_patched_source() -> None:
    _compat.ensure_lava()
    vm = sys.modules[_compat.TARGET_MODULE]
    assert isinstance(vm.__loader__, _compat._PatchedSourceLoader)
    assert vm.__cached__ is None
    assert vm.ByteEncoder.__dataclass_params__.frozen
    encoder = vm.CoreEncoder()
    assert encoder.x == vm.ByteEncoder(base=0, len=0, ptr=0)
    assert hash(encoder.x) == hash(vm.ByteEncoder())
    with pytest.raises(AttributeError):  # frozen: the shared default cannot be mutated
        encoder.x.base = 1


def test_loader_ignores_a_stale_pyc(tmp_path: Path) -> None:
    # A .pyc whose header matches the source (same mtime, same size) but whose code differs: the
    # ordinary SourceFileLoader trusts it, the patched loader must compile the source.
    src = tmp_path / "stale_mod.py"
    src.write_text("X = 2\n")
    pyc = importlib.util.cache_from_source(str(src))
    py_compile.compile(str(src), cfile=pyc, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    stat = src.stat()
    src.write_text("X = 1\n")
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    pyc_bytes = Path(pyc).read_bytes()

    def load(loader):
        spec = importlib.util.spec_from_file_location("stale_mod", src, loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        return module

    assert load(importlib.machinery.SourceFileLoader("stale_mod", str(src))).X == 2  # the trap
    assert load(_compat._PatchedSourceLoader("stale_mod", str(src), src.read_text())).X == 1
    assert Path(pyc).read_bytes() == pyc_bytes  # nothing written to __pycache__


def test_patch_source_rewrites_exactly_the_decorator() -> None:
    origin = importlib.util.find_spec(_compat.TARGET_MODULE).origin
    source = Path(origin).read_text()
    patched = _compat.patch_source(source)
    assert patched is not None
    assert patched.count("@dataclass(frozen=True)\nclass ByteEncoder:") == 1
    assert len(patched.splitlines()) == len(source.splitlines())  # tracebacks keep their lines
    diff = [(a, b) for a, b in zip(source.splitlines(), patched.splitlines()) if a != b]
    assert diff == [("@dataclass", "@dataclass(frozen=True)")]
    assert _compat.patch_source(patched) is None  # already fixed: import unchanged


def test_patch_source_rejects_an_unknown_layout() -> None:
    unknown = textwrap.dedent("""
        @dataclass(repr=False)
        class ByteEncoder:
            base: int = 0

        @dataclass
        class CoreEncoder:
            x: ByteEncoder = ByteEncoder()
    """)
    with pytest.raises(_compat.LavaCompatError, match=r"lava-nc 0\.10\.0 is installed.*supports "
                                                      r"lava-nc 0\.10\.0"):
        _compat.patch_source(unknown)
    no_default = "@dataclass\nclass CoreEncoder:\n    x: ByteEncoder = field(default_factory=ByteEncoder)\n"
    assert _compat.patch_source(no_default) is None


def test_missing_lava_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "lava_version", lambda: None)
    with pytest.raises(ImportError, match="lava-nc is not installed: run `make install`"):
        _compat.ensure_lava()


# Bias-driven single LIF neurons (nothing on a_in), with a decaying initial current u.
LIF_PARAMS = {
    "floating_pt": dict(u=2.0, du=0.25, v=0.0, dv=0.1, bias_mant=2.0, bias_exp=0, vth=10.0),
    "fixed_pt": dict(u=3000, du=1000, v=0, dv=300, bias_mant=100, bias_exp=2, vth=50),
}

LIF_RUN = """
import json, sys
import numpy as np
import hw_targets.lava as hl

hl.ensure_lava()
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.lif.process import LIF
from lava.proc.monitor.process import Monitor

T = 20
out = {}
for tag, p in json.loads(sys.argv[1]).items():
    lif = LIF(shape=(1,), **p)
    mon_v, mon_s = Monitor(), Monitor()
    mon_v.probe(lif.v, T)
    mon_s.probe(lif.s_out, T)
    try:
        lif.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag=tag))
        v = mon_v.get_data()[lif.name]["v"][:, 0]
        s = mon_s.get_data()[lif.name]["s_out"][:, 0]
    finally:
        lif.stop()
    out[tag] = {"v": np.asarray(v, float).tolist(), "s": np.asarray(s, float).tolist()}
print(json.dumps(out))
"""


def lif_float(T: int, u: float, du: float, v: float, dv: float, bias_mant: float, bias_exp: int,
              vth: float) -> tuple[list[float], list[int]]:
    """Lava's floating_pt LIF (bias_exp ignored): u = u(1-du) + a_in; v = v(1-dv) + u + bias."""
    vs, spikes = [], []
    for t in range(T):
        u = u * (1 - du)  # a_in = 0: nothing connected
        v = v * (1 - dv) + u + bias_mant
        spikes.append(int(v > vth))
        v = 0.0 if v > vth else v
        vs.append(v)
    return vs, spikes


def lif_fixed(T: int, u: int, du: int, v: int, dv: int, bias_mant: int, bias_exp: int,
              vth: int) -> tuple[list[float], list[int]]:
    """Lava's bit-accurate LIF: u' = sgn(u(4096-(du+1))) (|u(4096-(du+1))| >> 12) + (a_in << 6);
    v' = trunc(v(4096-dv)/4096) + u' + (bias_mant << bias_exp); spike when v' > vth << 6."""
    vs, spikes = [], []
    for t in range(T):
        du_ = u * (4096 - (du + 1))
        u = (1 if du_ > 0 else -1) * (abs(du_) >> 12)
        dv_ = v * (4096 - dv)
        v = (1 if dv_ > 0 else -1) * (abs(dv_) >> 12) + u + (bias_mant << bias_exp)
        v = max(-(2**23 - 1), min(2**23 - 1, v))
        spikes.append(int(v > vth << 6))
        v = 0 if v > vth << 6 else v
        vs.append(float(v))
    return vs, spikes


@pytest.mark.slow
def test_bias_driven_lif_matches_the_lava_equations() -> None:
    proc = run_python(LIF_RUN, json.dumps(LIF_PARAMS), timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for tag, oracle in [("floating_pt", lif_float), ("fixed_pt", lif_fixed)]:
        v, s = oracle(20, **LIF_PARAMS[tag])
        assert sum(s) >= 2, f"{tag}: the oracle should spike more than once in 20 steps"
        spike_times = [t for t, x in enumerate(got[tag]["s"]) if x]
        assert spike_times == [t for t, x in enumerate(s) if x], tag
        assert got[tag]["v"] == pytest.approx(v, rel=1e-12, abs=1e-12), tag


@pytest.mark.slow
def test_lava_imports_after_the_default_multiprocessing_context_is_fixed() -> None:
    """A multiprocessing lock made first (as tqdm's first progress bar does, e.g. NeuroBench's) fixes the default
    context; lava's import then calls ``set_start_method('fork')``, which fails on its own and is let through by
    :func:`ensure_lava` where the method in place is already fork. Another method is refused with the reason."""
    first = "import multiprocessing as mp; mp.RLock(); assert mp.get_start_method(allow_none=True) == 'fork'\n"
    plain = run_python(first + f"import {_compat.MP_MODULE}")
    assert plain.returncode != 0 and "context has already been set" in plain.stderr, plain.stderr
    hooked = run_python(first + f"""
import hw_targets.lava as hl
hl.ensure_lava()
import {_compat.MP_MODULE}
from lava.proc.dense.process import Dense
assert mp.get_start_method() == 'fork'
print('ok')""")
    assert hooked.returncode == 0 and hooked.stdout.split() == ["ok"], hooked.stderr
    spawn = run_python("""
import multiprocessing as mp
mp.set_start_method('spawn')
import hw_targets.lava as hl
hl.ensure_lava()""")
    assert spawn.returncode != 0 and "needs the 'fork' start method" in spawn.stderr, spawn.stderr
