"""``neuro.io``: what its module docstring guarantees.

* A checkpoint carries the SHA-256 of its bytes: a flipped bit anywhere in the file is refused with a one-line
  ``ValueError`` naming the file (through the command line too: resuming a run whose checkpoint was damaged
  is exit 2, not a run continuing from a weight of 1e35).
* Every failure to read a file as a checkpoint (random bytes, truncated or damaged files, payloads
  ``save_checkpoint`` does not write, malformed generator or NamedTuple entries) is that ``ValueError``.
* Atomic writers give a new file the mode ``open(path, "w")`` would (``0o666`` less the umask) and keep a
  replaced file's mode.
* ``save_npz``, ``save_figure`` and ``atomic_path`` leave the previous file and no temporary file behind
  when the writer fails, when a file-size limit stops it (``EFBIG``) and when the disk is full (``ENOSPC``,
  a small tmpfs where one can be mounted); the error is an ``OSError`` naming the target.
* numba caches compiled kernels under ``$XDG_CACHE_HOME/neuro/numba/src-<digest of the kernels' sources>``,
  not in the package.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io as pyio
import json
import os
import random
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _fs import small_tmpfs

from neuro import io
from neuro.rules.bptt import BPTTState

ROOT = Path(__file__).resolve().parents[2]


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp" in p.name)


def _with_checksum(payload) -> bytes:
    """``payload`` (already saveable, maybe malformed) as a file whose checksum holds."""
    buf = pyio.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    return body + b"\nneuro checkpoint sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n"


def _refused(path: Path, *words: str) -> str:
    """The message of the ``ValueError`` loading ``path`` raises: one line, naming the file and ``words``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as info:
            io.load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and all(w in msg for w in words), msg
    return msg


# -- integrity ------------------------------------------------------------------------------------------

def test_a_flipped_bit_anywhere_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    io.save_checkpoint(path, {"step": 3, "W_rec": torch.linspace(-1, 1, 16).reshape(4, 4)})
    good = path.read_bytes()
    assert torch.load(path, weights_only=True)["step"] == 3  # still a torch file for other tools
    rng = random.Random(0)
    with open(path, "r+b", buffering=0) as f:  # every byte, one bit each, changed in place
        for i in range(len(good)):
            f.seek(i)
            f.write(bytes([good[i] ^ 1 << rng.randrange(8)]))
            _refused(path)
            f.seek(i)
            f.write(good[i:i + 1])
    body = good.rindex(b"\nneuro checkpoint sha256 ") - 1  # the last byte of torch's part
    path.write_bytes(good[:body] + bytes([good[body] ^ 1]) + good[body + 1:])
    _refused(path, "checksum mismatch", "corrupt")
    path.write_bytes(good)
    assert io.load_checkpoint(path)["W_rec"].equal(torch.linspace(-1, 1, 16).reshape(4, 4))


@pytest.mark.slow  # the command line / a subprocess importing torch
def test_resuming_from_a_damaged_checkpoint_is_refused(tmp_path, capsys):
    from neuro.cli import main

    run = tmp_path / "run"
    args = ["train", "--model", "rate", "--task", "add", "--rule", "tbptt", "--hidden", "4", "--no-progress",
            "--steps", "20", "--run-dir", str(run)]
    assert main(args) == 0
    w = io.load_checkpoint(run / "checkpoint.pt")["params"]["W_rec"]
    data = bytearray((run / "checkpoint.pt").read_bytes())
    at = bytes(data).find(w.contiguous().numpy().tobytes())
    assert at > 0
    data[at + 3] ^= 0x40  # the exponent of W_rec[0, 0]: 1e35 instead of 0.1
    (run / "checkpoint.pt").write_bytes(bytes(data))
    capsys.readouterr()
    assert main([*args[:-4], "--steps", "30", "--run-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum mismatch" in err and str(run / "checkpoint.pt") in err, err


def test_a_checkpoint_without_a_checksum_is_read_with_a_warning(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"step": 7}, path)  # as checkpoints were written before they carried a checksum
    with pytest.warns(UserWarning, match=f"{path}.*no checksum"):
        ckpt = io.load_checkpoint(path)
    assert ckpt == {"step": 7}
    io.save_checkpoint(path, ckpt)  # saved again: with a checksum
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert io.load_checkpoint(path) == {"step": 7}


def test_random_truncated_and_damaged_files_are_one_value_error(tmp_path):
    rng = random.Random(1)
    g = torch.Generator().manual_seed(0)
    content = {"state": BPTTState(net=torch.ones(2), window=None, total=None, t=3), "gen": g,
               "rows": [1, 2.5, "x", None], "W": torch.randn(3, 5, generator=g)}
    path = tmp_path / "c.pt"
    io.save_checkpoint(path, content)
    good = path.read_bytes()
    legacy = good[:good.rindex(b"\nneuro checkpoint sha256 ")]  # the torch.save bytes alone: read without a check, through torch's readers
    junk = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000))) for _ in range(100)]
    junk += [good[:rng.randrange(len(good))] for _ in range(60)] + [legacy[:rng.randrange(len(legacy))] for _ in range(60)]
    flipped = [legacy[:rng.randrange(len(legacy))] + rng.randbytes(rng.randrange(500)) + legacy[-22:]  # a zip's end
               for _ in range(80)]
    for _ in range(150):
        bad = bytearray(legacy)
        for _ in range(rng.randrange(1, 6)):
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        flipped.append(bytes(bad))
    outcomes = []
    for data in junk + flipped:
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                io.load_checkpoint(path)
            except ValueError as e:
                assert "\n" not in str(e) and str(path) in str(e), str(e)
                outcomes.append(str(e).split(str(path))[1][:20])
            else:  # a damaged file without a checksum may still hold a readable checkpoint
                outcomes.append("loaded")
    assert "loaded" not in outcomes[:len(junk)]
    assert sum(o.startswith("' cannot be read (") for o in outcomes) >= 50  # torch's readers failed


@pytest.mark.parametrize("payload, words", [
    ({"__torch_generator__": True}, ["malformed generator"]),
    ({"__torch_generator__": True, "device": "cpu", "state": torch.zeros(3)}, ["malformed generator"]),
    ({"__torch_generator__": True, "device": "cpu", "state": torch.zeros(3, dtype=torch.uint8)}, ["generator"]),
    ({"__torch_generator__": False, "device": "cpu", "state": torch.zeros(3, dtype=torch.uint8)}, ["generator"]),
    ({"__namedtuple__": "neuro.rules.bptt:BPTTState"}, ["malformed NamedTuple"]),
    ({"__namedtuple__": 5, "fields": {}}, ["malformed NamedTuple"]),
    ({"__namedtuple__": "no_such_module:X", "fields": {}}, ["cannot be imported"]),
    ({"__namedtuple__": "collections:OrderedDict", "fields": {}}, ["not one"]),
    ({"__namedtuple__": "neuro.rules.bptt:BPTTState", "fields": {"bogus": 1}}, ["do not make"]),
    ({"x": b"bytes"}, ["bytes"]),
    ([{1, 2}], ["set"]),
    ({"x": 1j}, ["complex"]),
])
def test_payloads_save_checkpoint_does_not_write_are_one_value_error(tmp_path, payload, words):
    path = tmp_path / "c.pt"
    path.write_bytes(_with_checksum(payload))
    _refused(path, "not a checkpoint written by neuro", *words)


# -- modes ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _writers(d: Path) -> dict[str, object]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    def through_path(p):
        with io.atomic_path(p) as tmp:
            tmp.write_text("x")

    return {"a.json": lambda p: io.write_json(p, {"a": 1}), "b.csv": lambda p: io.write_csv(p, [{"a": 1}]),
            "c.pt": lambda p: io.save_checkpoint(p, {"a": 1}), "d.npz": lambda p: io.save_npz(p, a=np.ones(2)),
            "e.png": lambda p: io.save_figure(Figure(figsize=(1, 1)), p), "f.txt": through_path}


def test_written_files_get_the_umask_mode_or_keep_the_replaced_files(tmp_path):
    for name, write in _writers(tmp_path).items():
        with _umask(0o027):
            write(tmp_path / name)
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o640), name
        (tmp_path / name).chmod(0o604)
        with _umask(0o077):
            write(tmp_path / name)
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o604), name
    assert _leftovers(tmp_path) == []


# -- npz, figures, paths --------------------------------------------------------------------------------

def test_save_npz_save_figure_and_atomic_path_write_the_named_file(tmp_path):
    from matplotlib.figure import Figure

    assert io.save_npz(tmp_path / "trace", a=np.arange(3), file=np.ones(1)) == tmp_path / "trace"
    with np.load(tmp_path / "trace") as z:  # the name as given: numpy would have added .npz
        assert z["a"].tolist() == [0, 1, 2] and z["file"].tolist() == [1.0]
    fig = Figure(figsize=(1, 1))
    io.save_figure(fig, tmp_path / "r.png", dpi=20)
    io.save_figure(fig, tmp_path / "r.svg")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG" and b"<svg" in (tmp_path / "r.svg").read_bytes()
    with pytest.raises(ValueError, match="format 'xyz'.*png"):
        io.save_figure(fig, tmp_path / "r.xyz")
    with io.atomic_path(tmp_path / "net.nir") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".nir" and not tmp.exists()
        tmp.write_bytes(b"graph")
    assert (tmp_path / "net.nir").read_bytes() == b"graph"
    with pytest.raises(FileNotFoundError, match="did not create"), io.atomic_path(tmp_path / "lava") as tmp:
        np.savez(tmp, a=np.ones(1))  # writes tmp + ".npz"
    assert not (tmp_path / "lava").exists() and _leftovers(tmp_path) == []


def test_a_writer_failing_midway_leaves_the_previous_file_and_no_temporary(tmp_path):
    from matplotlib.figure import Figure

    class Boom(Exception):
        pass

    def bad_array():
        class A:
            def __array__(self, *a, **k):
                raise Boom

        return A()

    def bad_figure():
        fig = Figure()
        fig.canvas.print_figure = lambda *a, **k: (_ for _ in ()).throw(Boom())
        return fig

    def half_dir(p):
        with io.atomic_path(p) as tmp:
            tmp.mkdir()
            (tmp / "part").write_text("half")
            raise Boom

    for name, write in {"t.npz": lambda p: io.save_npz(p, a=np.ones(2), b=bad_array()),
                        "f.png": lambda p: io.save_figure(bad_figure(), p), "d.out": half_dir}.items():
        (tmp_path / name).write_bytes(b"previous")
        with pytest.raises(Boom):
            write(tmp_path / name)
        assert (tmp_path / name).read_bytes() == b"previous" and _leftovers(tmp_path) == [], name


_LIMITED = """
import errno, json, resource, sys
import numpy as np, torch
from neuro import io
d = sys.argv[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
big = np.zeros(200_000)
def via_path(p):
    with io.atomic_path(p) as tmp:
        tmp.write_bytes(big.tobytes())
out = {}
for name, write in {"a.txt": lambda p: io.write_text(p, "x" * 200_000),
                    "b.pt": lambda p: io.save_checkpoint(p, {"step": 2, "w": torch.randn(50_000)}),
                    "c.npz": lambda p: io.save_npz(p, a=np.random.rand(50_000)),
                    "d.bin": via_path}.items():
    try:
        write(f"{d}/{name}")
        out[name] = "written"
    except OSError as e:
        out[name] = [e.errno, e.filename]
print(json.dumps(out))
"""


@pytest.mark.slow  # the command line / a subprocess importing torch
def test_a_file_size_limit_leaves_the_previous_files(tmp_path):
    names = ["a.txt", "b.pt", "c.npz", "d.bin"]
    for name in names:
        io.save_checkpoint(tmp_path / name, {"step": 1}) if name.endswith(".pt") else io.write_text(tmp_path / name, "old")
    before = {n: (tmp_path / n).read_bytes() for n in names}
    r = subprocess.run([sys.executable, "-c", _LIMITED, str(tmp_path)], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == {n: [errno.EFBIG, str(tmp_path / n)] for n in names}, got
    assert {n: (tmp_path / n).read_bytes() for n in names} == before and _leftovers(tmp_path) == []
    assert io.load_checkpoint(tmp_path / "b.pt") == {"step": 1}


def test_a_full_disk_mid_checkpoint_keeps_the_previous_checkpoint(tmp_path):
    with small_tmpfs(tmp_path / "small", 256) as d:
        path = d / "checkpoint.pt"
        io.save_checkpoint(path, {"step": 1, "w": torch.ones(1000)})
        before = path.read_bytes()
        with pytest.raises(OSError) as info:
            io.save_checkpoint(path, {"step": 2, "w": torch.randn(100_000)})  # 800 kB on 256 kB
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(path), repr(info.value)
        assert path.read_bytes() == before and _leftovers(d) == []
        assert io.load_checkpoint(path)["step"] == 1


# -- numba's cache --------------------------------------------------------------------------------------

_KERNEL = """
import torch, numba
from neuro.rules._matvec import mv2
W = torch.arange(6.0, dtype=torch.float64).reshape(2, 3)
a = torch.ones(3, dtype=torch.float64)
assert mv2(W, a, a)[0].tolist() == [3.0, 12.0]
print(numba.config.CACHE_DIR)
"""


def _cache_files() -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (ROOT / "neuro").rglob("*.nb[ic]")}


def _run_kernel(env: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | env
    r = subprocess.run([sys.executable, "-c", _KERNEL], capture_output=True, text=True, timeout=300, env=env,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.slow
def test_numba_caches_kernels_under_the_user_cache_directory(tmp_path):
    pytest.importorskip("numba")
    before = _cache_files()
    used = Path(_run_kernel({"XDG_CACHE_HOME": str(tmp_path)}))
    # one directory per version of the kernels' sources (numba re-checks only the loaded function's own file)
    assert used.parent == tmp_path / "neuro" / "numba" and re.fullmatch(r"src-[0-9a-f]{16}", used.name), used
    assert list((tmp_path / "neuro" / "numba").rglob("_matvec.*.nbi")), "no cache written there"
    assert _cache_files() == before, "numba wrote into the package"


@pytest.mark.slow
def test_numba_works_without_a_writable_cache_directory_and_keeps_the_users_choice(tmp_path):
    pytest.importorskip("numba")
    (tmp_path / "file").write_text("not a directory")
    used = _run_kernel({"XDG_CACHE_HOME": str(tmp_path / "file")})
    assert "neuro-numba-" in used and not Path(used).exists()  # a temporary directory, removed at exit
    mine = tmp_path / "mine"
    assert _run_kernel({"NUMBA_CACHE_DIR": str(mine)}) == str(mine)
