"""Pure parts of the interleaved comparison: medians, spreads, the outside-load rule, targets.

The benchmark runs the single process and a preset in turn (single, preset,
single, preset, ...), each run in a fresh container from the same cached
image.  One pair says little on a shared or noisy machine; the median of the
per-pair ratios, with its spread, says how typical a ratio is.  A run during
which the container's CPUs were busy with something else is not a
measurement of our package: it is marked invalid, and so is every figure
computed from it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

#: Default limit of CPU (in cores) spent on the container's CPUs by anything
#: outside the container during a measured run.  An idle machine measured
#: 0.01-0.03 (kernel threads, the host's own daemons); other benchmark or test
#: jobs take 0.3 and more.
MAX_OUTSIDE_CORES = 0.10


def outside_cores(busy_s: float, inside_s: float, elapsed_s: float) -> float:
    """CPU (cores) spent outside the container: busy time of its CPUs minus its own processes' time."""
    if elapsed_s <= 0:
        raise ValueError(f"elapsed time must be above 0, not {elapsed_s}")
    return max(0.0, busy_s - inside_s) / elapsed_s


def outside_load_problem(outside: float, limit: float = MAX_OUTSIDE_CORES) -> str | None:
    """Why a run is invalid because of other load on its CPUs, or None when it is not.

    >>> outside_load_problem(0.02) is None
    True
    >>> outside_load_problem(0.5)
    'outside load: 0.50 cores busy outside the container during the run (limit 0.10)'
    """
    if outside > limit:
        return f"outside load: {outside:.2f} cores busy outside the container during the run (limit {limit:.2f})"
    return None


@dataclass(frozen=True)
class Spread:
    """The median of some values and how far they range."""

    median: float
    low: float
    high: float
    n: int

    @property
    def relative(self) -> float:
        """(high - low) / median: 0.1 means the values lie within 10% of the median's size."""
        return (self.high - self.low) / self.median if self.median else math.nan

    def show(self, unit: str = "") -> str:
        """'1.42x (range 1.30x-1.50x, n=3)' for unit 'x'."""
        if self.n == 0:
            return "-"
        return f"{self.median:.2f}{unit} (range {self.low:.2f}{unit}-{self.high:.2f}{unit}, n={self.n})"

    def __str__(self) -> str:
        return self.show()


def spread(values: Iterable[float]) -> Spread:
    """Median, minimum and maximum of the finite values (NaN everywhere for none)."""
    xs = sorted(v for v in values if v is not None and math.isfinite(v))
    if not xs:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(statistics.median(xs), xs[0], xs[-1], len(xs))


def pair_ratios(base: Sequence[float | None], other: Sequence[float | None]) -> list[float]:
    """other[i] / base[i] for each round where both were measured (None: not measured).

    Pairing by round keeps each ratio between two runs made close together in
    time, so slow drifts (a warming disk cache, the machine's other jobs) cancel.

    >>> pair_ratios([10.0, 20.0, None], [15.0, 20.0, 30.0])
    [1.5, 1.0]
    """
    out = []
    for b, o in zip(base, other):
        if b is None or o is None or not b or not math.isfinite(b) or not math.isfinite(o):
            continue
        out.append(o / b)
    return out


def rounds_needed(ratios: Sequence[float], effect: float | None = None) -> int | None:
    """Rounds needed before a difference of ``effect`` (0.2: 20%; default: the one the
    ratios' median claims) stands out of the round-to-round noise the ratios show.

    The per-round ratios' standard deviation ``sd`` is the noise of one round; the
    mean of n rounds has sd/sqrt(n), and a difference stands out at about two of
    those (95%): n >= (2 sd / effect)^2, and at least 3.  None: fewer than two
    ratios (no noise to judge by) or no difference to find.

    >>> rounds_needed([1.20, 1.54])  # run A of issue 26: 1.37x claimed
    3
    >>> rounds_needed([1.20, 1.54], 0.1)  # telling 1.3x from 1.2x in that noise
    24
    >>> rounds_needed([1.20, 1.16, 1.26], 0.05)
    5
    """
    xs = [r for r in ratios if math.isfinite(r)]
    if len(xs) < 2:
        return None
    size = effect if effect is not None else abs(statistics.median(xs) - 1.0)
    if size <= 0:
        return None
    return max(3, math.ceil((2 * statistics.stdev(xs) / size) ** 2))


def interleaved_order(configs: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, configuration) in the order they run: every configuration once per round.

    >>> interleaved_order(["single", "minimal"], 2)
    [(0, 'single'), (0, 'minimal'), (1, 'single'), (1, 'minimal')]
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    return [(r, c) for r in range(rounds) for c in configs]


@dataclass(frozen=True)
class Target:
    """One line of the report's target table."""

    name: str
    measured: str
    #: "met", "NOT met", or "invalid: outside load" (or another reason it cannot be judged).
    verdict: str
    #: When missed: where the time or memory went.
    why: str = ""


def judge(met: bool, valid: bool, invalid_reason: str = "invalid: outside load") -> str:
    """The verdict of a target: a figure from an invalid run is no verdict at all.

    >>> judge(True, True), judge(False, True), judge(True, False)
    ('met', 'NOT met', 'invalid: outside load')
    """
    if not valid:
        return invalid_reason
    return "met" if met else "NOT met"
