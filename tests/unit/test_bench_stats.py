"""The load generator's pure parts: percentiles and the request mix (bench/stats.py)."""

from __future__ import annotations

import math
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.stats import Mix, parse_mix, percentile, summarize  # noqa: E402


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3], 50) == 2


def test_percentile_of_nothing_and_bad_q():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_summarize_turns_seconds_into_milliseconds():
    s = summarize([0.010, 0.020, 0.030, 0.040], errors=2)
    assert (s.count, s.errors, s.p50_ms, s.p99_ms, s.max_ms) == (4, 2, 20.0, 40.0, 40.0)
    assert math.isnan(summarize([]).p50_ms)


def test_mix_pick_follows_the_weights_at_the_edges():
    mix = Mix.of({"sync": 60, "send": 20, "messages": 10, "profile": 10})
    assert mix.pick(0.0) == "sync"
    assert mix.pick(0.5999) == "sync"
    assert mix.pick(0.6) == "send"
    assert mix.pick(0.85) == "messages"
    assert mix.pick(0.95) == "profile"
    assert mix.pick(0.999999) == "profile"


def test_mix_choice_matches_the_stated_shares():
    mix = parse_mix("sync:60,send:20,messages:10,profile:10")
    rng = random.Random(4)
    counts = Counter(mix.choose(rng) for _ in range(20000))
    for name, share in {"sync": 0.6, "send": 0.2, "messages": 0.1, "profile": 0.1}.items():
        assert abs(counts[name] / 20000 - share) < 0.015


def test_zero_weights_are_left_out_and_bad_mixes_refused():
    assert parse_mix("sync:1,send:0").names == ("sync",)
    for bad in ("", "sync:0", "nope:5", "sync", "sync:-1"):
        with pytest.raises(ValueError):
            parse_mix(bad)
