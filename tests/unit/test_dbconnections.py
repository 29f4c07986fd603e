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


def test_unchecked_gives_the_numbers_the_admin_must_ensure():
    """An image build cannot ask PostgreSQL: preset busy is 27 workers + main."""
    from matrix_synapse_workers.core.dbconnections import unchecked
    text = unchecked(28, cp_min=3, cp_max=5, reason="connection refused")
    assert "not checked (connection refused)" in text
    assert "28 Synapse processes open 84" in text and "up to 140" in text
    assert "max_connections = 143" in text and "matrix-synapse-workers status" in text


def test_status_row_for_the_database():
    from matrix_synapse_workers.status.checks import check_database
    from matrix_synapse_workers.status.model import FAIL, OK, WARN, DatabaseFacts
    fits = check_database(DatabaseFacts(4, 1, 5, max_connections=100, reserved=3))
    assert fits.status == OK and "20 <= 97" in fits.detail
    busy = check_database(DatabaseFacts(28, 3, 5, max_connections=100, reserved=3))
    assert busy.status == WARN and "140" in busy.advice and "143" in busy.advice
    assert check_database(DatabaseFacts(40, 3, 5, max_connections=100, reserved=3)).status == FAIL
    unknown = check_database(DatabaseFacts(28, 3, 5, error="connection refused"))
    assert unknown.status == WARN and "140" in unknown.advice


def test_an_empty_server_name_configures_nothing_and_says_what_to_do(tmp_path):
    import pytest
    from hostroot import make_root
    from matrix_synapse_workers.core.errors import HostConfigError
    from matrix_synapse_workers.system.hostfacts import require_server_name
    root = make_root(tmp_path)
    require_server_name(root)
    (root / "etc/matrix-synapse/conf.d/server_name.yaml").write_text("server_name: \n")
    with pytest.raises(HostConfigError) as caught:
        require_server_name(root)
    message = str(caught.value)
    assert "server_name is None" in message and "matrix-synapse/server-name" in message
    assert "dpkg-reconfigure matrix-synapse-workers" in message
