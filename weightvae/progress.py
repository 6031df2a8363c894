"""Progress of a stage's long loop, shown the way DVC and Lightning users know it.

On a terminal: a tqdm bar (items done / total, rate, elapsed and time left), on stderr like DVC's own.
Anywhere else (CI logs, `dvc repro > log`, tests): nothing while it runs, then one line when the
loop is done, `<stage>: 2560/2560 checkpoints in 41.0s (62.4 checkpoints/s)`, so logs stay short.
A failed loop prints nothing: the error line is what matters then.

`WEIGHTVAE_PROGRESS` overrides the choice: `bar`, `line` or `off`.

A stage uses it as

    with Progress("ingest", total=len(files), unit="files") as bar:
        for f in files:
            ...
            bar.update()

or `for x in track(items, "probe", unit="models")`; `add_total(n)` grows the total when the work is
only known group by group (evaluate, reconstruct).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self

T = TypeVar("T")
MODES = ("bar", "line", "off")
ENV = "WEIGHTVAE_PROGRESS"


def mode_for(stream: IO[str]) -> str:
    """`bar` on a terminal, else `line`; the environment variable `WEIGHTVAE_PROGRESS` wins when set."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"{ENV}={forced!r}: choose one of {list(MODES)}")
        return forced
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "line"


class Progress:
    """Counts items done of a (possibly growing) total; see the module docstring.

    `log` receives the single summary line in `line` mode (default: print to stdout, beside the
    stage's own summary); `stream` is where the bar goes in `bar` mode (default: stderr)."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", *, stream: IO[str] | None = None,
                 log: Callable[[str], Any] = print, mode: str | None = None):
        self.desc, self.total, self.unit, self.log = desc, total, unit, log
        self.stream = sys.stderr if stream is None else stream
        self.mode = mode or mode_for(self.stream)
        if self.mode not in MODES:
            raise ValueError(f"progress mode {self.mode!r}: choose one of {list(MODES)}")
        self.n = 0
        self.t0 = time.perf_counter()
        self._bar = None
        self._closed = False
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream, dynamic_ncols=True,
                             mininterval=0.5, leave=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)

    def add_total(self, n: int) -> None:
        """Grow the total by `n` (work discovered group by group)."""
        self.total = (self.total or 0) + n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def line(self) -> str:
        """The one-line summary: items done (of the total), time, rate."""
        seconds = time.perf_counter() - self.t0
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        rate = self.n / seconds if seconds > 0 else 0.0
        return f"{self.desc}: {done} {self.unit} in {seconds:.1f}s ({rate:.1f} {self.unit}/s)"

    def close(self, ok: bool = True) -> None:
        """Finish: close the bar, or (line mode, `ok`) write the summary line. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "line" and ok:
            self.log(self.line())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kwargs: Any) -> Iterator[T]:
    """Yield from `items`, counting each; the summary line is written once they are exhausted."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(desc, total, unit, **kwargs) as bar:
        for item in items:
            yield item
            bar.update()
