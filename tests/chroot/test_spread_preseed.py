"""Preseeded installs of a deployment over several machines, with real dpkg and debconf.

The main host's answers name the worker hosts and main's private replication
address; the install writes the cluster directory the admin copies to each
worker host.  Bad answers stop the install before anything changes, naming
the value.  A worker host gives only its name; without the copied directory
it installs and configures nothing, and a name the copied file does not list
is refused.

Run as root with Debian's Python:  /usr/bin/python3 -m pytest tests/chroot
"""

from __future__ import annotations

from typing import Iterator

import pytest
import yaml

from support.chroot import Chroot, Installed, chroot_copy, run

PACKAGE = "matrix-synapse-workers"
ETC = "/etc/matrix-synapse"
CLUSTER_DIR = f"{ETC}/cluster"
CLUSTER_FILE = f"{CLUSTER_DIR}/cluster.yaml"
SECRETS = (f"{CLUSTER_DIR}/replication-secret", f"{CLUSTER_DIR}/redis-password")
STATE = "/var/lib/matrix-synapse-workers"
# Where a rerun must change nothing, checksums and mtimes.
WATCHED = (ETC, "/etc/redis", "/etc/tmpfiles.d", "/etc/systemd/system", STATE)

SPREAD_ANSWERS = {
    "preset": "small",
    "worker-hosts": "hostb 10.99.0.2 sync:2,events; hostc 10.99.0.3 federation_sender",
    "replication-address": "10.99.0.1",
}


def workers_on_disk(chroot: Chroot) -> set[str]:
    directory = chroot / f"{ETC}/workers"
    return {p.stem for p in directory.glob("*.yaml")} if directory.is_dir() else set()


def changed(before: dict, after: dict) -> dict[str, tuple]:
    return {path: (before.get(path), after.get(path))
            for path in sorted(set(before) | set(after)) if before.get(path) != after.get(path)}


def error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(f"{PACKAGE}: Error:")]
    assert len(lines) == 1, output
    return lines[0]


# --- a main host with worker hosts --------------------------------------------


@pytest.fixture(scope="module")
def spread(standin_layer, ours_deb) -> Iterator[Installed]:
    with chroot_copy(standin_layer) as chroot:
        chroot.preseed(SPREAD_ANSWERS)
        yield Installed(chroot, chroot.apt_install(ours_deb).stdout)


def test_main_with_worker_hosts_installs_and_says_what_to_copy(spread):
    c = spread.chroot
    assert c.status() == "ii"
    out = spread.output
    assert f"{PACKAGE}: 2 workers configured (sync-1, client-1); Redis: dedicated (redis-server); on worker " \
           "hosts: sync-1-hostb, sync-2-hostb, events-1-hostb, federation-sender-1-hostc" in out, out
    for label, address in (("hostb", "10.99.0.2"), ("hostc", "10.99.0.3")):
        assert (f"{PACKAGE}: worker host {label} ({address}): copy /etc/matrix-synapse/cluster/"
                in out), out
        assert f"host-role worker-host and host-name {label}" in out
    # Only main's own workers have files here.
    assert workers_on_disk(c) == {"sync-1", "client-1"}
    answers = c.answers()
    assert {k: answers[k] for k in SPREAD_ANSWERS} == SPREAD_ANSWERS
    assert (answers["host-role"], answers["allow-public-address"]) == ("main", "false")


def test_main_with_worker_hosts_writes_the_cluster_file(spread):
    c = spread.chroot
    data = yaml.safe_load((c / CLUSTER_FILE).read_text())
    assert data["replication"] == {"host": "10.99.0.1", "port": 9093}
    assert data["redis"] == {"host": "10.99.0.1", "port": 6379}
    assert data["hosts"] == {
        "main": {"workers": ["sync-1", "client-1"]},
        "hostb": {"address": "10.99.0.2", "workers": ["sync-1-hostb", "sync-2-hostb", "events-1-hostb"]},
        "hostc": {"address": "10.99.0.3", "workers": ["federation-sender-1-hostc"]},
    }
    assert c.owner(CLUSTER_FILE)[:2] == ("root", "root")


def test_main_with_worker_hosts_writes_the_secrets_for_synapse_only(spread):
    c = spread.chroot
    values = set()
    for path in SECRETS:
        assert c.owner(path) == ("root", "matrix-synapse", 0o640), path
        value = (c / path).read_text().strip()
        assert len(value) >= 32 and "\n" not in value, path
        values.add(value)
    assert len(values) == 2, "the two secrets differ"
    assert c.owner(CLUSTER_DIR) == ("root", "matrix-synapse", 0o750)
    # Never inline: Synapse's YAML names the files.
    for path in (c / f"{ETC}/conf.d").glob("*.yaml"):
        for value in values:
            assert value not in path.read_text(), path


def test_main_with_worker_hosts_reconfigure_changes_nothing_and_keeps_the_secrets(spread):
    """The admin may have copied the secrets already: a rerun must not replace them."""
    c = spread.chroot
    before = c.snapshot(*WATCHED)
    c.run("dpkg-reconfigure", "-fnoninteractive", PACKAGE)
    assert changed(before, c.snapshot(*WATCHED)) == {}


def test_main_with_a_confirmed_public_address_and_shared_media_store(synapse_host, ours_deb):
    """Both confirmations preseeded: taken, and the media one recorded for the worker host."""
    c = synapse_host
    c.preseed({**SPREAD_ANSWERS, "replication-address": "0.0.0.0:9094",
               "allow-public-address": "true",
               "worker-hosts": "hostb 10.99.0.2 sync:2,events,media; hostc 10.99.0.3 federation_sender",
               "shared-media-store": "true"})
    c.apt_install(ours_deb)
    assert c.status() == "ii"
    data = yaml.safe_load((c / CLUSTER_FILE).read_text())
    assert data["replication"] == {"host": "0.0.0.0", "port": 9094}
    assert "media-1-hostb" in data["hosts"]["hostb"]["workers"]
    assert data["shared_media_store"] is True


# --- bad answers stop before any change -----------------------------------------

BAD_SPREAD_PRESEEDS = {
    "public address, not confirmed": (
        {"replication-address": "1.2.3.4"},
        "allow-public-address", ["replication address '1.2.3.4' is a public address",
                                 "give a private address", "confirm it explicitly"]),
    "wildcard address, not confirmed": (
        {"replication-address": "0.0.0.0"},
        "allow-public-address", ["'0.0.0.0' is a wildcard address"]),
    "a host without workers": (
        {"worker-hosts": "hostb 10.99.0.2; hostc 10.99.0.3 sync"},
        "worker-hosts", ["worker host 'hostb 10.99.0.2' is not understood",
                         "LABEL ADDRESS WORKERS"]),
    "a label with capitals": (
        {"worker-hosts": "HostB 10.99.0.2 sync"},
        "worker-hosts", ["host name 'HostB' is not allowed", "lower-case letters and digits"]),
    "two hosts at one address": (
        {"worker-hosts": "hostb 10.99.0.2 sync; hostc 10.99.0.2 events"},
        "worker-hosts", ["two worker hosts have the address '10.99.0.2'"]),
    "media on a worker host, no shared media store confirmed": (
        {"worker-hosts": "hostb 10.99.0.2 sync,media"},
        "shared-media-store", ["media workers on worker host 'hostb'", "media_store_path",
                               "missing (404) on the others", "--shared-media-store"]),
    "no replication address": (
        {"replication-address": ""},
        "replication-address", ["no replication address"]),
}


@pytest.mark.parametrize("case", list(BAD_SPREAD_PRESEEDS))
def test_bad_spread_preseed_fails_before_any_change(synapse_host, ours_deb, case):
    c = synapse_host
    changes, question, fragments = BAD_SPREAD_PRESEEDS[case]
    before = c.snapshot("/etc", "/run", STATE)
    c.preseed({**SPREAD_ANSWERS, **changes})

    done = c.apt_install(ours_deb, check=False)

    assert done.returncode != 0
    line = error_line(done.stdout)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert f"question {PACKAGE}/{question})" in done.stdout
    assert f"{PACKAGE}: nothing was changed" in done.stdout
    assert c.status() == "iF"
    assert changed(before, c.snapshot("/etc", "/run", STATE)) == {}
    assert not c.has_group("clubmatrix")

    # Fixed answers, configured again: the cluster directory appears.
    c.preseed(SPREAD_ANSWERS)
    c.run("dpkg", "--configure", "-a")
    assert c.status() == "ii"
    assert (c / CLUSTER_FILE).is_file()


# --- a worker host ------------------------------------------------------------------


def test_worker_host_without_the_cluster_directory_installs_and_configures_nothing(
        synapse_host, ours_deb):
    c = synapse_host
    before = c.snapshot(ETC, "/etc/redis", "/etc/tmpfiles.d", STATE)
    # The main host's questions are not looked at on a worker host, even invalid ones.
    c.preseed({"host-role": "worker-host", "host-name": "hostb", "preset": "custom",
               "worker-types": "", "replication-address": "1.2.3.4",
               "worker-hosts": "garbage"})

    out = c.apt_install(ours_deb).stdout

    assert c.status() == "ii"
    assert f"{PACKAGE}: workers are NOT configured: {CLUSTER_FILE} does not exist" in out, out
    assert "copy the directory /etc/matrix-synapse/cluster from the main host" in out
    # Nothing changed but the reason kept for status ("not configured: ..."), one rule for
    # every refusal.
    assert set(changed(before, c.snapshot(ETC, "/etc/redis", "/etc/tmpfiles.d", STATE))) <= {
        STATE, f"{STATE}/not-configured"}
    assert CLUSTER_FILE in (c / f"{STATE}/not-configured").read_text()


def test_worker_host_name_missing_from_the_copied_cluster_file_is_refused(
        synapse_host, spread, ours_deb):
    c = synapse_host
    # The directory as the admin copies it from the main host, owners and modes kept.
    run("cp", "-a", spread.chroot / CLUSTER_DIR, c / CLUSTER_DIR)
    before = c.snapshot("/etc", STATE)
    c.preseed({"host-role": "worker-host", "host-name": "hostd"})

    done = c.apt_install(ours_deb, check=False)

    assert done.returncode != 0
    line = error_line(done.stdout)
    assert "host name 'hostd' is not a worker host in /etc/matrix-synapse/cluster/cluster.yaml" in line
    assert "accepted: hostb, hostc" in line
    assert f"question {PACKAGE}/host-name)" in done.stdout
    assert c.status() == "iF"
    assert changed(before, c.snapshot("/etc", STATE)) == {}


def test_interactive_public_address_asks_for_the_confirmation_then_another_address(
        synapse_host, ours_deb):
    """With a terminal: the refusal is shown, the confirmation asked; declining it asks
    for the address again."""
    c = synapse_host
    c.preseed(SPREAD_ANSWERS)
    c.apt_install(ours_deb)
    c.preseed({"replication-address": "1.2.3.4"})
    # At priority high config asks the preset (small) and the address (the public one);
    # the postinst then refuses it, asks the confirmation (declined), then the address.
    typed = "3\n1.2.3.4\nno\n10.99.0.5\n"
    # Bounded: teletype asks forever once the typed lines run out.
    shown = c.interactive(f"dpkg-reconfigure -phigh {PACKAGE}", typed,
                          env={"DEBIAN_FRONTEND": "teletype"})

    out = " ".join(shown.split())
    assert "Invalid answer" in out, out
    assert "replication address '1.2.3.4' is a public address" in out, out
    assert "Allow a public or wildcard replication address?" in out, out
    answers = c.answers()
    assert (answers["replication-address"], answers["allow-public-address"]) == ("10.99.0.5", "false")
    data = yaml.safe_load((c / CLUSTER_FILE).read_text())
    assert data["replication"] == {"host": "10.99.0.5", "port": 9093}
