"""The memory budget: the pure split (core/memory.py), what it renders, and reading it back."""

from dataclasses import replace
from pathlib import PurePosixPath

import pytest
import yaml

from hostroot import homeserver, make_root
from matrix_synapse_workers.cli import main
from matrix_synapse_workers.core import memory
from matrix_synapse_workers.core.catalog import MAIN_CACHE_WEIGHT, ROLES
from matrix_synapse_workers.core.errors import SelectionError
from matrix_synapse_workers.core.plan import Plan, plan_workers
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.core.settings import Settings
from matrix_synapse_workers.debconf.answers import InvalidAnswer, Q_MEMORY_BUDGET, from_answers
from matrix_synapse_workers.render.files import render
from matrix_synapse_workers.system.hostfacts import deployed_memory_budget, read_host_facts
from matrix_synapse_workers.system.memoryfacts import postgres_shared_buffers, redis_maxmemory

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
SHARED = PurePosixPath("etc/matrix-synapse/conf.d/workers.yaml")


def mib(text):
    return int(text.rstrip("M"))


@pytest.mark.parametrize("text, expected", [("auto", None), (" AUTO ", None), ("", None), ("2048", 2048),
                                            ("2048M", 2048), ("3 GiB", 3072), ("1g", 1024)])
def test_budget_spellings(text, expected):
    assert memory.parse_budget(text) == expected


@pytest.mark.parametrize("text", ["lots", "-5", "2.5G", "100", "99999999G", "2048 MiB please"])
def test_a_bad_budget_names_the_value_and_what_is_accepted(text):
    with pytest.raises(SelectionError) as caught:
        memory.parse_budget(text)
    assert repr(text.strip()) in str(caught.value) and "auto" in str(caught.value)


def test_every_process_gets_the_minimum_and_the_rest_goes_by_weight():
    plan = memory.memory_plan(2000, [("main", 3), ("sync-1", 3), ("typing-1", 1), ("pusher-1", 1)],
                              jemalloc=True)
    shares = {s.name: s.mib for s in plan.shares}
    assert sum(shares.values()) <= 2000 and sum(shares.values()) > 2000 - len(shares)
    assert min(shares.values()) >= memory.MIN_PROCESS_MIB
    assert shares["main"] == shares["sync-1"] > shares["typing-1"] == shares["pusher-1"]
    for share in plan.shares:
        tuning = plan.caches_for(share.name)["cache_autotuning"]
        # Synapse needs all three, or it evicts erratically.
        assert set(tuning) == {"max_cache_memory_usage", "target_cache_memory_usage", "min_cache_ttl"}
        assert mib(tuning["target_cache_memory_usage"]) < mib(tuning["max_cache_memory_usage"]) < share.mib


def test_an_explicit_budget_too_small_for_the_processes_is_refused():
    with pytest.raises(SelectionError, match=r"memory budget 500 MiB .* 3 Synapse processes.* at least 600"):
        memory.memory_plan(500, [("main", 3), ("sync-1", 3), ("client-1", 2)], jemalloc=True)


def test_auto_is_half_the_ram_less_what_postgres_and_redis_hold_and_never_below_the_minimum():
    plan = memory.memory_plan(None, [("main", 3), ("sync-1", 3)], jemalloc=True, ram_mib=8192,
                              reserved=[("PostgreSQL 15/main shared_buffers", 1024)])
    assert plan.budget_mib == 3072 and "1024 MiB PostgreSQL" in plan.source
    small = memory.memory_plan(None, [("main", 3), ("sync-1", 3)], jemalloc=True, ram_mib=512)
    assert small.budget_mib == 400 and "raised" in small.source


def test_without_jemalloc_nothing_is_set():
    plan = memory.memory_plan(2000, [("main", 3)], jemalloc=False, admin_caches={"global_factor": 2})
    assert not plan.enforced and plan.caches_for("main") == {}


def test_the_admin_s_caches_settings_win_key_by_key():
    own = {"global_factor": 2.0, "cache_autotuning": {"max_cache_memory_usage": "4G",
                                                      "target_cache_memory_usage": "3G",
                                                      "min_cache_ttl": "5m"}}
    plan = memory.memory_plan(2000, [("main", 3)], jemalloc=True, admin_caches=own)
    assert plan.caches_for("main") == own and plan.overridden == ("cache_autotuning",)
    plan = memory.memory_plan(2000, [("main", 3)], jemalloc=True, admin_caches={"global_factor": 2.0})
    assert plan.caches_for("main")["global_factor"] == 2.0 and "cache_autotuning" in plan.caches_for("main")


def test_weights_come_from_the_catalog():
    plan = Plan(plan_workers(select(workers="sync,typing"), ()))
    assert memory.processes_of(plan) == (("main", MAIN_CACHE_WEIGHT), ("sync-1", ROLES["sync"].cache_weight),
                                         ("typing-1", ROLES["typing"].cache_weight))


def _rendered(tmp_path, settings=Settings(), spec="sync,typing", **facts_changes):
    root = make_root(tmp_path, homeserver(tmp_path, **facts_changes.pop("config", {})))
    facts = replace(read_host_facts(root), memory_mib=8192, memory_reserved=(), **facts_changes)
    plan = Plan(plan_workers(select(workers=spec), ()))
    return {str(f.path): f.content for f in render(plan, facts, settings)}


def test_each_process_s_share_is_rendered_into_its_own_file(tmp_path):
    files = _rendered(tmp_path, Settings(memory_budget=1600), jemalloc=JEMALLOC)
    shared = yaml.safe_load(files[str(SHARED)])
    sync = yaml.safe_load(files["etc/matrix-synapse/workers/sync-1.yaml"])
    typing = yaml.safe_load(files["etc/matrix-synapse/workers/typing-1.yaml"])
    ceilings = [mib(c["caches"]["cache_autotuning"]["max_cache_memory_usage"]) for c in (shared, sync, typing)]
    assert ceilings[0] == ceilings[1] > ceilings[2]
    assert "# memory-budget: 1600\n" in files[str(SHARED)]
    dropin = files["etc/systemd/system/matrix-synapse-worker@sync-1.service.d/matrix-synapse-workers.conf"]
    assert f"Environment=LD_PRELOAD={JEMALLOC} PYTHONMALLOC=malloc\n" in dropin
    main_dropin = files["etc/systemd/system/matrix-synapse.service.d/matrix-synapse-workers-sandbox.conf"]
    assert "PYTHONMALLOC=malloc" in main_dropin


def test_without_libjemalloc2_no_caches_and_no_preload_are_rendered(tmp_path):
    files = _rendered(tmp_path, Settings(memory_budget=1600), jemalloc=None)
    assert "caches" not in yaml.safe_load(files[str(SHARED)])
    assert not any("LD_PRELOAD" in text for text in files.values())


def test_the_admin_s_caches_reach_every_worker_file(tmp_path):
    """A worker's own ``caches`` replaces homeserver.yaml's (shallow merge): theirs is carried."""
    own = {"global_factor": 1.5, "per_cache_factors": {"get_users_who_share_room_with_user": 2.0}}
    files = _rendered(tmp_path, Settings(), jemalloc=JEMALLOC, admin_caches=own)
    sync = yaml.safe_load(files["etc/matrix-synapse/workers/sync-1.yaml"])["caches"]
    assert sync["global_factor"] == 1.5 and sync["per_cache_factors"] == own["per_cache_factors"]
    assert "cache_autotuning" in sync


def test_the_budget_is_read_back_from_the_shared_file(tmp_path):
    root = make_root(tmp_path)
    assert deployed_memory_budget(root) is None
    (root / SHARED).parent.mkdir(parents=True, exist_ok=True)
    (root / SHARED).write_text("# Generated by matrix-synapse-workers 1\n# memory-budget: 3072\n")
    assert deployed_memory_budget(root) == 3072


def test_a_bad_answer_is_traced_to_the_question():
    with pytest.raises(InvalidAnswer) as caught:
        from_answers("minimal", "", "", "clubmatrix", "www-data", "dedicated", "", memory_budget="much")
    assert caught.value.question == Q_MEMORY_BUDGET and "'much'" in str(caught.value)
    _, settings = from_answers("minimal", "", "", "clubmatrix", "www-data", "dedicated", "",
                               memory_budget="4G")
    assert settings.memory_budget == 4096


def test_the_command_refuses_a_bad_budget_with_one_error(tmp_path, capsys):
    root = make_root(tmp_path)
    code = main(["render", "--root", str(root), "--preset", "minimal", "--memory-budget", "lots"])
    err = capsys.readouterr().err
    assert code != 0 and "memory budget 'lots'" in err and len(err.strip().splitlines()) == 1


def test_postgres_and_redis_memory_are_read_from_their_configuration(tmp_path):
    cluster = tmp_path / "etc/postgresql/15/main"
    (cluster / "conf.d").mkdir(parents=True)
    (cluster / "postgresql.conf").write_text("#shared_buffers = 1GB\nshared_buffers = 256MB  # min 128kB\n")
    (cluster / "conf.d/tune.conf").write_text("shared_buffers = '2GB'\n")
    (tmp_path / "etc/postgresql/16/other").mkdir(parents=True)
    (tmp_path / "etc/postgresql/16/other/postgresql.conf").write_text("max_connections = 100\n")
    (tmp_path / "etc/redis").mkdir(parents=True)
    (tmp_path / "etc/redis/redis.conf").write_text("# maxmemory <bytes>\nmaxmemory 512mb\n")
    assert postgres_shared_buffers(tmp_path) == [("PostgreSQL 15/main shared_buffers", 2048),
                                                 ("PostgreSQL 16/other shared_buffers", 128)]
    assert redis_maxmemory(tmp_path) == [("redis maxmemory", 512)]


def _jemalloc_root(tmp_path):
    import sysconfig
    root = make_root(tmp_path)
    library = root / "usr/lib" / (sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu") / "libjemalloc.so.2"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"")
    return root


def _changes(root, on_disk, spec, settings):
    from matrix_synapse_workers.core.changes import compute_changes
    existing = tuple(p.stem for p in on_disk if p.parent == PurePosixPath("etc/matrix-synapse/workers"))
    plan = Plan(plan_workers(select(workers=spec), existing))
    return compute_changes(plan, render(plan, read_host_facts(root), settings), on_disk)


def test_a_new_worker_moves_the_others_shares_without_restarting_them_and_a_new_budget_restarts(tmp_path):
    from matrix_synapse_workers.core.changes import OnDisk
    root = _jemalloc_root(tmp_path)
    settings = Settings(memory_budget=2000)
    first = _changes(root, {}, "sync,typing", settings)
    on_disk = {f.path: OnDisk(f.content, f.mode) for f in first.write}
    added = _changes(root, on_disk, "sync:2,typing", settings)
    assert added.start == ("sync-2",) and added.restart_workers == () and not added.restart_main
    assert PurePosixPath("etc/matrix-synapse/workers/sync-1.yaml") in {f.path for f in added.write}
    rebudgeted = _changes(root, on_disk, "sync,typing", Settings(memory_budget=3000))
    assert rebudgeted.restart_main and set(rebudgeted.restart_workers) == {"sync-1", "typing-1"}
