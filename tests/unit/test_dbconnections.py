"""The database-connection budget: refused when even the minimum pools do not fit,
warned when the pools at their maximum do not (the busy preset's 500s under load)."""

from matrix_synapse_workers.core.dbconnections import DEFAULT_CP_MAX, DEFAULT_CP_MIN, pool_sizes, verdict


def test_minimum_pools_over_the_limit_is_an_error_naming_the_numbers_and_fixes():
    found = verdict(40, cp_min=5, cp_max=10, max_connections=100, reserved=3)
    assert found.warning is None
    assert "40 Synapse processes open at least 200 database connections" in found.error
    assert "max_connections in postgresql.conf to at least 203" in found.error
    assert "lower cp_min (now 5)" in found.error


def test_maximum_pools_over_the_limit_is_a_warning():
    # The benchmark's busy preset: 28 processes, cp_max 5, PostgreSQL's default 100.
    found = verdict(28, cp_min=1, cp_max=5, max_connections=100, reserved=3)
    assert found.error is None
    assert "up to 140 database connections" in found.warning and "at least 143" in found.warning
    assert "lower cp_max (now 5)" in found.warning


def test_within_the_limit_says_nothing():
    assert verdict(19, cp_min=1, cp_max=5, max_connections=100, reserved=3).warning is None
    assert verdict(97, cp_min=1, cp_max=1, max_connections=100, reserved=3).error is None
    assert verdict(98, cp_min=1, cp_max=1, max_connections=100, reserved=3).error is not None


def test_pool_sizes_default_to_twisteds():
    assert pool_sizes(None) == (DEFAULT_CP_MIN, DEFAULT_CP_MAX) == (3, 5)
    assert pool_sizes({"name": "psycopg2", "args": {"cp_min": 5, "cp_max": 10}}) == (5, 10)
    assert pool_sizes({"args": {"cp_max": "x"}}) == (3, 5)
