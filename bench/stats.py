"""Pure parts of the load generator: the request mix and latency summaries.

Standard library only: this file is copied into the benchmark container next
to loadgen.py and runs under Debian's python3 there.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

#: Endpoint classes the generator knows, in report order.
CLASSES: tuple[str, ...] = ("sync", "send", "messages", "profile")

#: The default mix: incremental /sync (since token, timeout=0), sends, /messages, profile reads.
DEFAULT_MIX: Mapping[str, float] = {"sync": 0.6, "send": 0.2, "messages": 0.1, "profile": 0.1}


@dataclass(frozen=True)
class Mix:
    """A weighted choice of endpoint classes; weights need not sum to 1."""

    names: tuple[str, ...]
    cumulative: tuple[float, ...]

    @classmethod
    def of(cls, weights: Mapping[str, float]) -> "Mix":
        names, cumulative, total = [], [], 0.0
        for name, weight in weights.items():
            if weight < 0 or not math.isfinite(weight):
                raise ValueError(f"weight of {name} must be a finite number >= 0, not {weight}")
            if weight == 0:
                continue
            total += weight
            names.append(name)
            cumulative.append(total)
        if not names:
            raise ValueError("a mix needs at least one class with a weight above 0")
        return cls(tuple(names), tuple(c / total for c in cumulative))

    def pick(self, u: float) -> str:
        """The class for a uniform number u in [0, 1)."""
        i = bisect.bisect_right(self.cumulative, u)
        return self.names[min(i, len(self.names) - 1)]

    def choose(self, rng: random.Random) -> str:
        return self.pick(rng.random())


def parse_mix(text: str) -> Mix:
    """``sync:60,send:20,messages:10,profile:10`` -> a Mix (names must be known classes)."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition(":")
        if not sep or name not in CLASSES:
            raise ValueError(f"bad mix entry {part!r}: want CLASS:WEIGHT with CLASS one of {', '.join(CLASSES)}")
        weights[name] = float(value)
    return Mix.of(weights)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank method.

    Nearest rank never invents a value between two samples: p99 of 100
    samples is the 99th smallest.  NaN for no samples.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q / 100 * n))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Summary:
    count: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def summarize(latencies_s: Iterable[float], errors: int = 0) -> Summary:
    """Latencies of successful requests (seconds) -> a Summary in milliseconds."""
    values = sorted(x * 1000.0 for x in latencies_s)
    return Summary(count=len(values), errors=errors,
                   p50_ms=percentile(values, 50), p95_ms=percentile(values, 95),
                   p99_ms=percentile(values, 99), max_ms=values[-1] if values else math.nan)


def open_loop_schedule(rate: float, duration_s: float, mix: Mix, seed: int) -> list[tuple[float, str]]:
    """(seconds from start, class) of every request of an open-loop run.

    Requests arrive at a fixed rate, evenly spaced (1/rate apart), whatever
    the answers' speed: a slow answer does not hold back the next request as
    it does in a closed loop, so latency includes the queueing a server at
    that load really builds up.  The classes follow the mix, reproducibly
    for a seed.
    """
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a finite number of requests per second above 0, not {rate}")
    if not duration_s > 0:
        raise ValueError(f"duration must be above 0 seconds, not {duration_s}")
    rng = random.Random(seed)
    n = int(rate * duration_s)
    return [(i / rate, mix.choose(rng)) for i in range(n)]


def lateness_ms(scheduled: Sequence[float], sent: Sequence[float]) -> Summary:
    """How late the generator sent requests against their schedule (seconds in, ms out).

    An open-loop generator that falls behind would hide the server's slowness
    as its own; the report shows this so a run where the generator could not
    keep up is visible.
    """
    return summarize(max(0.0, s - t) for t, s in zip(scheduled, sent))


def retry_after_s(status: int, body: bytes, waited_s: float, bound_s: float) -> float | None:
    """How long a client like Element or matrix-nio waits before sending a request again that
    was answered ``status`` after ``waited_s`` seconds, or None when it does not: only a 429 is
    retried, after its retry_after_ms (1 s without one), and only while the whole wait stays
    within ``bound_s``.  A 500 or 502 is shown to the user at once.

    >>> limited = b'{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":3000}'
    >>> retry_after_s(429, limited, 1.0, 30.0), retry_after_s(429, limited, 28.0, 30.0)
    (3.0, None)
    >>> retry_after_s(502, b"<html>", 1.0, 30.0) is None
    True
    """
    if status != 429:
        return None
    try:
        wait = float(json.loads(body).get("retry_after_ms", 1000)) / 1000
    except (ValueError, AttributeError):
        wait = 1.0
    return wait if waited_s + wait <= bound_s else None
