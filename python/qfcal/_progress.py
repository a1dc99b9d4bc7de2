"""How the library reports: log records and one kind of progress bar.

Library modules never print. What they have to say goes to ``logging`` under the ``qfcal``
logger (``logging.getLogger(__name__)`` in each module), so an application decides what it
shows; the ``qfcal`` command shows INFO and above on stdout (:func:`show_info`).

Long loops (calibration over batches, per-tensor searches, evaluation over images) draw one kind
of progress bar, :class:`Progress`: a live line on stderr when stderr is a terminal, and
otherwise (logs, CI, notebooks' captured output) an INFO record every 30 seconds and one at the
end, so a long run leaves a trace without filling a log with redraws.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("qfcal")

# Seconds between redraws of a live bar, and between INFO records of a bar without a terminal.
REDRAW_SECONDS = 0.1
LOG_SECONDS = 30.0
BAR_WIDTH = 24


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


class Progress:
    """A progress bar over `total` steps (None: unknown), labelled `label`.

    ``update(n)`` adds `n` done steps; ``close()`` (or leaving the ``with`` block) ends the bar
    and logs one INFO record, ``"<label>: <done> <unit> in <time>"``. With `enabled` False it
    does nothing at all (the ``progress=False`` of the public functions).
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        *,
        unit: str = "",
        enabled: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.enabled = enabled
        self.logger = logger or log
        self.done = 0
        self.start = self.last = time.monotonic()
        self.live = enabled and _is_terminal()
        self.closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # an exception ends the bar without the "done" record: the error says what happened
        self.close(record=kind is None)

    def _text(self, now: float) -> str:
        unit = f" {self.unit}" if self.unit else ""
        elapsed = _duration(now - self.start)
        if not self.total:
            return f"{self.label}: {self.done}{unit}, {elapsed}"
        frac = min(1.0, self.done / self.total)
        filled = round(frac * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        return (
            f"{self.label}: [{bar}] {self.done}/{self.total}{unit} ({100 * frac:.0f}%), {elapsed}"
        )

    def update(self, n: int = 1) -> None:
        if not self.enabled or self.closed:
            return
        self.done += n
        now = time.monotonic()
        if self.live:
            if now - self.last >= REDRAW_SECONDS or (self.total and self.done >= self.total):
                self.last = now
                sys.stderr.write("\r" + self._text(now) + "\x1b[K")
                sys.stderr.flush()
        elif now - self.last >= LOG_SECONDS:
            self.last = now
            self.logger.info("%s", self._text(now))

    def close(self, summary: str | None = None, *, record: bool = True) -> None:
        """End the bar; log `summary` (default: what was done and how long it took)."""
        if not self.enabled or self.closed:
            return
        self.closed = True
        now = time.monotonic()
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        if record:
            unit = f" {self.unit}" if self.unit else ""
            text = summary or f"{self.label}: {self.done}{unit} in {_duration(now - self.start)}"
            self.logger.info("%s", text)


def track(
    items: Iterable[T],
    label: str,
    *,
    total: int | None = None,
    unit: str = "",
    enabled: bool = True,
    logger: logging.Logger | None = None,
) -> Iterator[T]:
    """`items` one by one, with a :class:`Progress` bar counting them (`total`: their number,
    taken from ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, label, unit=unit, enabled=enabled, logger=logger) as bar:
        for item in items:
            yield item
            bar.update()


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class _CurrentStdout(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is when a record is emitted (a test's capture, a
    redirected stream), not the stream of the moment the handler was made."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def show_info() -> None:
    """Show the ``qfcal`` logger's INFO records as plain lines on stdout, and only there: what
    the ``qfcal`` command does (TensorFlow's converter gives the root logger a handler of its
    own, which would print every record a second time). Idempotent."""
    if not any(isinstance(h, _CurrentStdout) for h in log.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
