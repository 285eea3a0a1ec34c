"""The bookkeeping of one sweep while its runs finish: each result saved as it comes, failures gathered.

A run that fails (an error in the run, a worker that died) does not stop the others: they finish and are
saved, and the sweep then raises :class:`SweepFailed` naming each failed run on one line and where the
finished ones are kept. A run that finished but could not be saved (a full disk) stops the sweep from
starting more runs (those running finish, and are saved if the disk allows); :class:`SweepFailed` names
what was kept. Either way the finished runs are in ``SweepFailed.results`` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from neuro import io
from neuro.errors import RunFailed, os_error

from .report import Results

__all__ = ["Sweep", "SweepFailed"]


class SweepFailed(RunFailed):
    """Some runs of a sweep failed; ``results`` holds those that finished, ``failures`` one line per failed
    run, ``last_good`` the directory of the runs kept (None without an output directory)."""

    def __init__(self, message: str, last_good: Path | None, results: Results, failures: list[str]) -> None:
        super().__init__(message, last_good)
        self.results = results
        self.failures = failures


class Sweep:
    """The runs ``specs`` of a sweep into ``out`` (None: nothing saved), ``done`` those already finished."""

    def __init__(self, specs: Sequence[Any], out: Path | None, done: dict[int, dict[str, Any]],
                 progress: bool) -> None:
        self.specs, self.out, self.progress = list(specs), out, progress
        self.results: dict[int, dict[str, Any]] = dict(done)
        self.trained: dict[int, dict[str, Any]] = {}
        self.failed: list[str] = []  # one line per failed job
        self.n_failed = 0
        self.unsaved: dict[int, str] = {}  # run -> why it could not be saved

    def _name(self, idx: list[int]) -> str:
        s = [self.specs[i] for i in idx]
        seeds = ", ".join(str(x.seed) for x in s)
        return f"rule {s[0].rule!r}, seed{'s' if len(s) > 1 else ''} {seeds}"

    def _count(self) -> str:
        return f"[{len(self.results) + self.n_failed}/{len(self.specs)}]"

    def stopping(self) -> bool:
        """True once a finished run could not be saved: no run starts after that."""
        return bool(self.unsaved)

    def on_done(self, i: int, result: dict[str, Any]) -> None:
        import torch

        from .harness import _json_roundtrip

        spec = self.specs[i]
        params = result.pop("params", None)
        dtype = torch.float64 if spec.dtype == "float64" else torch.float32
        if params is not None:
            self.trained[i] = {k: torch.as_tensor(v, dtype=dtype) for k, v in params.items()}
        result = _json_roundtrip(result)  # what a resumed sweep would read back
        self.results[i] = result
        if self.out is not None:
            path = spec.path(self.out)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if i in self.trained:  # first the parameters, then the result that marks the run done
                    io.save_checkpoint(path.with_suffix(".pt"), self.trained[i])
                io.write_json(path, result)
            except OSError as e:
                self.unsaved[i] = os_error(e)
        if self.progress:
            what = "diverged" if result.get("diverged") else f"final loss {result['final_loss']:.4g}"
            if i in self.unsaved:
                what += f", not saved: {self.unsaved[i]}"
            print(f"{self._count()} {spec.rule} seed {spec.seed}: {what}", flush=True)

    def on_failed(self, idx: list[int], why: str) -> None:
        why = " ".join(why.split())
        self.n_failed += len(idx)
        self.failed.append(f"{self._name(idx)} failed: {why}")
        if self.progress:
            print(f"{self._count()} {self.failed[-1]}", flush=True)

    def _partial(self) -> Results:
        idx = sorted(self.results)
        return Results(runs=[self.results[i] for i in idx],
                       params={(self.specs[i].rule, self.specs[i].seed): self.trained[i] for i in idx if i in self.trained})

    def finish(self) -> Results:
        """The :class:`Results` of every run (written into ``out`` with the summary), or :class:`SweepFailed`."""
        n = len(self.specs)
        if self.failed or self.unsaved or len(self.results) < n:
            raise self._failure()
        for i in range(n):
            pt = None if self.out is None else self.specs[i].path(self.out).with_suffix(".pt")
            if i not in self.trained and pt is not None and pt.is_file():
                self.trained[i] = io.load_checkpoint(pt)
        res = Results(runs=[self.results[i] for i in range(n)],
                      params={(self.specs[i].rule, self.specs[i].seed): self.trained[i] for i in self.trained})
        if self.out is not None:
            try:
                res.write(self.out)
            except OSError as e:
                raise SweepFailed(f"the summary of the sweep could not be written ({os_error(e)}); all {n} runs "
                                  f"finished and are kept in {str(self.out / 'runs')!r}: free space and run the same "
                                  "command again to write it (no run is redone)", self.out / "runs", res, []) from None
        return res

    def _failure(self) -> SweepFailed:
        n = len(self.specs)
        lines = list(self.failed)
        lines += [f"{self._name([i])} finished but was not saved: {why}" for i, why in sorted(self.unsaved.items())]
        missing = n - len(self.results) - self.n_failed
        if missing:
            lines.append(f"{missing} run{'s were' if missing > 1 else ' was'} not started")
        if self.out is None:
            kept, last_good = "no run was saved (no output directory was given)", None
        else:
            k = len(self.results) - len(self.unsaved)
            last_good = self.out / "runs"
            kept = (f"{k} of {n} runs are kept in {str(last_good)!r}; run the same command again to run only "
                    "the others" + (" (after freeing space)" if self.unsaved else ""))
        n_bad = n - len(self.results) + len(self.unsaved)
        return SweepFailed(f"{n_bad} of {n} runs of the sweep are missing: {'; '.join(lines)}; {kept}",
                           last_good, self._partial(), lines)
