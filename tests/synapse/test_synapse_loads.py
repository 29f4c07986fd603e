"""Every rendered file set must load in the real Synapse, as main and as each worker."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from hostroot import homeserver, make_root
from matrix_synapse_workers.core.catalog import PRESETS, ROLES
from matrix_synapse_workers.cli import main

ETC = "etc/matrix-synapse"


def file_sets(root: Path) -> dict[str, list[str]]:
    """Main: homeserver.yaml + conf.d/; each worker: those + its own file (the units' order)."""
    base = [str(root / ETC / "homeserver.yaml"), str(root / ETC / "conf.d")]
    sets = {"main": base}
    for worker in sorted((root / ETC / "workers").glob("*.yaml")):
        sets[worker.stem] = base + [str(worker)]
    return sets


def assert_socket_modes_are_integers(root: Path) -> None:
    """Synapse loads ``mode: 0o660`` as a string without complaint and crashes later
    (after creating a 0755 socket), so the loader cannot catch it: check with the
    same YAML parser Synapse uses."""
    for path in [root / ETC / "conf.d/workers.yaml", *(root / ETC / "workers").glob("*.yaml")]:
        data = yaml.safe_load(path.read_text())
        for listener in data.get("listeners", []) + data.get("worker_listeners", []):
            if "path" in listener:
                assert listener["mode"] in (0o660, 0o600), (path, listener)


def render_and_load(tmp_path, load, *args):
    root = make_root(tmp_path)
    assert main(["render", "--root", str(root), *args]) == 0
    sets = file_sets(root)
    assert_socket_modes_are_integers(root)
    results = load(sets, (str(tmp_path / "signing.key"),))
    failures = {label: r for label, r in results.items() if not r.startswith("OK")}
    assert not failures
    # Each process knows who it is: main is 'master', workers by their names.
    assert results["main"] == "OK master"
    for label in sets:
        if label != "main":
            assert results[label] == f"OK {label}"
    return root, results


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_loads(tmp_path, load_with_synapse, preset):
    render_and_load(tmp_path, load_with_synapse, "--preset", preset)


@pytest.mark.parametrize("spec", [
    "sync:4,federation_sender:2,events:2,background",
    "sync:2,client:3,federation_reader:2,media:2,pusher:3,receipts:2,device_lists:2,quarantined_media:2",
    "events:3,typing,to_device,account_data,presence,push_rules,thread_subscriptions:2",
    "appservice,user_dir",
])
def test_mixed_explicit_counts_load(tmp_path, load_with_synapse, spec):
    render_and_load(tmp_path, load_with_synapse, "--workers", spec)


def test_every_role_in_the_catalog_loads(tmp_path, load_with_synapse):
    render_and_load(tmp_path, load_with_synapse, "--workers", ",".join(ROLES))


def test_synapse_rejects_a_broken_set_so_these_tests_can_fail(tmp_path, load_with_synapse):
    """Control: remove a stream writer from instance_map and Synapse must refuse it."""
    root = make_root(tmp_path)
    assert main(["render", "--root", str(root), "--workers", "typing"]) == 0
    shared = root / ETC / "conf.d/workers.yaml"
    data = yaml.safe_load(shared.read_text())
    del data["instance_map"]["typing-1"]
    shared.write_text(yaml.safe_dump(data))
    results = load_with_synapse(file_sets(root), (str(tmp_path / "signing.key"),))
    assert "does not appear in `instance_map`" in results["main"]


def test_catalog_streams_match_synapses_writer_list(synapse_python):
    """Every stream Synapse's WriterLocations knows is a role in the catalog, and no more."""
    code = ("import attr; from synapse.config.workers import WriterLocations; "
            "print(' '.join(a.name for a in attr.fields(WriterLocations)))")
    streams = set(subprocess.run([synapse_python, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.split())
    assert streams == {role.stream for role in ROLES.values() if role.stream}


def test_catalog_duty_keys_are_read_by_synapse(synapse_python):
    """Each duty key appears in Synapse's worker or media config code."""
    code = ("import inspect, synapse.config.workers as w, synapse.config.repository as r; "
            "print(inspect.getsource(w) + inspect.getsource(r))")
    source = subprocess.run([synapse_python, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    for role in ROLES.values():
        keys = [role.duty.key] if role.duty else []
        keys += list(role.shared_when_present) + list(role.own_config)
        keys += [role.leader_key] if role.leader_key else []
        for key in keys:
            assert f'"{key}"' in source, (role.name, key)


def test_metrics_listeners_load(tmp_path, load_with_synapse):
    """Every process with its metrics listener (type metrics, TCP on loopback) and enable_metrics."""
    root, _ = render_and_load(tmp_path, load_with_synapse, "--workers", "sync:2,client,events,media",
                              "--metrics")
    shared = yaml.safe_load((root / ETC / "conf.d/workers.yaml").read_text())
    assert shared["enable_metrics"] is True
    assert [l["type"] for l in shared["listeners"]].count("metrics") == 1


def test_the_check_removes_the_media_store_it_made_and_still_refuses_one_it_cannot(
        tmp_path, load_with_synapse):
    """Synapse's loader makes a missing media store; the check (synapse_check.py, the
    one apply runs before writing) removes what it made, so purge finds nothing of it."""
    store = tmp_path / "lib/matrix-synapse/media"
    root = make_root(tmp_path, homeserver(tmp_path, media_store_path=str(store)))
    assert main(["render", "--root", str(root), "--workers", "media"]) == 0
    (tmp_path / "lib/matrix-synapse").mkdir(parents=True)
    results = load_with_synapse(file_sets(root), (str(tmp_path / "signing.key"),))
    assert results["main"] == "OK master" and results["media-1"] == "OK media-1"
    assert not store.exists() and (tmp_path / "lib/matrix-synapse").is_dir()
    # A store that exists stays, with what is in it.
    store.mkdir()
    (store / "local_content").mkdir()
    load_with_synapse(file_sets(root), (str(tmp_path / "signing.key"),))
    assert (store / "local_content").is_dir()
    # One that cannot be made is still refused: a file where its directory would be.
    (store / "local_content").rmdir()
    store.rmdir()
    store.write_text("")
    results = load_with_synapse(file_sets(root), (str(tmp_path / "signing.key"),))
    assert "File exists" in results["media-1"], results


#: What Synapse's CacheConfig makes of the rendered cache_autotuning: bytes and milliseconds.
_READ_CACHES = r'''
import json, sys
from signedjson.key import generate_signing_key, write_signing_keys
from synapse.config.homeserver import HomeServerConfig
key_path, sets = sys.argv[1], json.loads(sys.stdin.read())
with open(key_path, "w") as handle:
    write_signing_keys(handle, [generate_signing_key("a")])
found = {}
for label, paths in sets:
    argv = [a for p in paths for a in ("--config-path", p)]
    config = HomeServerConfig.load_config("memory budget check", argv)
    found[label] = config.caches.cache_autotuning
print(json.dumps(found))
'''


def test_the_memory_budget_s_cache_settings_are_what_synapse_reads(tmp_path, load_with_synapse,
                                                                     synapse_python):
    """With libjemalloc2 present, each process's share becomes cache_autotuning that Synapse's
    own parser turns into byte ceilings: main and sync above typing, all within the budget."""
    import sysconfig
    root = make_root(tmp_path)
    library = root / "usr/lib" / (sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu") / "libjemalloc.so.2"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"")
    assert main(["render", "--root", str(root), "--workers", "sync,typing", "--memory-budget", "1200"]) == 0
    sets = file_sets(root)
    results = load_with_synapse(sets, (str(tmp_path / "signing.key"),))
    assert all(r.startswith("OK") for r in results.values()), results
    read = subprocess.run([synapse_python, "-c", _READ_CACHES, str(tmp_path / "signing.key")],
                          input=json.dumps(list(sets.items())), capture_output=True, text=True,
                          check=True, timeout=600)
    tuning = json.loads(read.stdout)
    ceilings = {label: t["max_cache_memory_usage"] for label, t in tuning.items()}
    assert ceilings["main"] == ceilings["sync-1"] > ceilings["typing-1"] > 0
    assert sum(ceilings.values()) < 1200 * 2**20
    for t in tuning.values():
        assert 0 < t["target_cache_memory_usage"] < t["max_cache_memory_usage"]
        assert t["min_cache_ttl"] == 120_000
