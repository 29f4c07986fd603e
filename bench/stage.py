"""The benchmark's container: Synapse on PostgreSQL, our package with a preset, nginx in front.

Built from the same cached layers as the booted tests (tests/booted/harness.py
and booted_config.py; no pytest needed): the first run builds them, later runs boot in seconds.
"""

from __future__ import annotations

import functools
import inspect
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "booted"))

import harness  # noqa: E402
from harness import Container  # noqa: E402

from booted_config import SERVER_NAME, STANDIN_MAIN_URL, STANDIN_VERSION  # noqa: E402  (the booted tests' own)
SOCKETS = "/run/matrix-synapse"
REDIS_SOCKET = "/run/redis-matrix-synapse/redis-server.sock"
BENCH_DIR = "/opt/msw-bench"
SYNAPSE_PYTHON = "/opt/venvs/matrix-synapse/bin/python"
NGINX_PORT = 8080

# nginx trusts X-Forwarded-For from loopback (the generator), so each simulated
# user reaches Synapse with its own address, as real clients would.
_REALIP = """    set_real_ip_from 127.0.0.1;
    real_ip_header X-Forwarded-For;
"""
# The package's routing: its snippet in a vhost, as README.Debian tells an admin.
VHOST_WORKERS = f"""server {{
    listen 127.0.0.1:{NGINX_PORT};
    server_name {SERVER_NAME};
{_REALIP}    include snippets/matrix-synapse-workers.conf;
}}
"""
# The single process without the package: the usual reverse proxy to main's TCP port,
# with the same keep-alive pool the package's upstreams have.
VHOST_SINGLE = f"""upstream msw_bench_single {{
    server 127.0.0.1:8008;
    keepalive 16;
}}
server {{
    listen 127.0.0.1:{NGINX_PORT};
    server_name {SERVER_NAME};
{_REALIP}    location / {{
        proxy_pass http://msw_bench_single;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        client_max_body_size 50M;
    }}
}}
"""


def _build(cmd: list[str]) -> str:
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return r.stdout.strip().splitlines()[-1]


def standin_deb(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return Path(_build([str(REPO / "tests/standin/build-standin"), STANDIN_VERSION, str(out)]))


def package_deb(given: Path | None) -> Path:
    if given:
        return given
    return Path(_build([str(REPO / "scripts/build-deb"), "--head"]))


def synapse_root(standin: Path) -> Path:
    """The booted tests' cached layer: the stand-in Synapse on PostgreSQL, package not installed."""
    base = harness.ensure_base_root()
    setup = functools.partial(harness.install_standin_synapse, deb=standin, server_name=SERVER_NAME)
    return harness.ensure_derived_root(
        "standin-synapse", base, setup,
        inputs=[inspect.getsource(harness.synapse_setup), repr(harness.synapse_settings()),
                harness._SYNAPSE_SETUP_PY, STANDIN_MAIN_URL])


def preseed(preset: str, types: str = "", counts: str = "", memory_budget: str | None = None) -> str:
    lines = [f"matrix-synapse-workers matrix-synapse-workers/preset select {preset}"]
    if memory_budget:
        lines.append(f"matrix-synapse-workers matrix-synapse-workers/memory-budget string {memory_budget}")
    if types:
        lines.append(f"matrix-synapse-workers matrix-synapse-workers/worker-types multiselect {types}")
    lines.append(f"matrix-synapse-workers matrix-synapse-workers/worker-counts string {counts}")
    return "\n".join(lines) + "\n"


def workers_on_disk(c: Container) -> list[str]:
    out = c.run("ls /etc/matrix-synapse/workers/ 2>/dev/null", check=False).stdout.split()
    return sorted(n[:-5] for n in out if n.endswith(".yaml"))


def redis_clients(c: Container) -> int:
    """Synapse's connections to its Redis (redis-cli's own excluded)."""
    r = c.run(["redis-cli", "-s", REDIS_SOCKET, "CLIENT", "LIST"], check=False, timeout=20)
    lines = [l for l in r.stdout.splitlines() if "cmd=" in l]
    return len([l for l in lines if "cmd=client" not in l])


def wait_healthy(c: Container, names: list[str], timeout: float = 120.0) -> None:
    for name in ["main", *names]:
        harness.wait_for_http(c, f"{SOCKETS}/{name}.sock", "/health", timeout=timeout)
    want = 2 * (len(names) + 1)
    deadline = time.monotonic() + timeout
    while redis_clients(c) < want:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {redis_clients(c)} Redis connections, want {want}")
        time.sleep(0.5)


def limit_cores(c: Container, cores: int) -> None:
    """Keep the whole container on CPUs 0..cores-1 (children inherit the affinity)."""
    import bench.procs as procs  # noqa: PLC0415
    cpus = f"0-{cores - 1}"
    for pid in procs._descendants(c.pid):
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], capture_output=True)


def pin_main(c: Container, cpu: int = 0) -> None:
    pid = c.run(["systemctl", "show", "-P", "MainPID", "matrix-synapse.service"]).stdout.strip()
    c.run(["taskset", "-a", "-p", "-c", str(cpu), pid])


JEMALLOC_PACKAGE = "libjemalloc2"
JEMALLOC_DIR = Path("/var/cache/matrix-synapse-workers-tests/bench-debs")


def jemalloc_deb() -> Path:
    """Debian's libjemalloc2 .deb, fetched once on the host (the container has no network)."""
    JEMALLOC_DIR.mkdir(parents=True, exist_ok=True)
    found = sorted(JEMALLOC_DIR.glob(f"{JEMALLOC_PACKAGE}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", "-q", JEMALLOC_PACKAGE], cwd=JEMALLOC_DIR,
                       check=True, capture_output=True, timeout=300)
        found = sorted(JEMALLOC_DIR.glob(f"{JEMALLOC_PACKAGE}_*.deb"))
    if not found:
        raise SystemExit(f"apt-get download {JEMALLOC_PACKAGE} left no .deb in {JEMALLOC_DIR}")
    return found[-1]


def synapse_env(c: Container, units: list[str], env: list[str]) -> None:
    """Add KEY=VALUE environment to these units (a drop-in each); takes effect at their next start."""
    text = "[Service]\n" + "".join(f"Environment={e}\n" for e in env)
    for unit in units:
        c.write_file(f"/etc/systemd/system/{unit}.d/msw-bench-env.conf", text)
    c.run(["systemctl", "daemon-reload"])


def mapped(c: Container, unit: str, library: str) -> bool:
    """Whether the unit's main process has mapped a library (say libjemalloc)."""
    pid = c.run(["systemctl", "show", "-P", "MainPID", unit]).stdout.strip()
    return library in c.run(["cat", f"/proc/{pid}/maps"]).stdout


def prepare(c: Container, deb: Path, preset: str | None, jemalloc: bool | None = None,
            env: tuple[str, ...] = (), worker_extra: str = "", shared_extra: str = "",
            types: str = "", counts: str = "", memory_budget: str | None = None) -> list[str]:
    """Install the package with preset (None: leave it out), nginx in front, the generator copied in.

    types and counts: the custom preset's answers (say "sync, events" and "sync:2").

    jemalloc True: every Synapse process runs with libjemalloc.so.2 preloaded;
    False or None: glibc's malloc.  env: KEY=VALUE for every Synapse process;
    worker_extra: YAML appended to every worker's file (settings for workers only);
    shared_extra: YAML in conf.d (settings for every Synapse process).
    """
    env = tuple(env)
    if jemalloc:
        c.install_debs([jemalloc_deb()])
        lib = c.run("ls /usr/lib/*-linux-gnu/libjemalloc.so.2").stdout.split()[0]
        env += (f"LD_PRELOAD={lib}",)
    if preset:
        c.install_debs([deb], preseed=preseed(preset, types, counts, memory_budget))
        names = workers_on_disk(c)
        vhost = VHOST_WORKERS
    else:
        names = []
        vhost = VHOST_SINGLE
    if env or worker_extra or shared_extra:
        if shared_extra:
            c.write_file("/etc/matrix-synapse/conf.d/msw-bench.yaml", shared_extra)
        if env:
            synapse_env(c, ["matrix-synapse.service", "matrix-synapse-worker@.service"], list(env))
        for n in names if worker_extra else []:
            path = f"/etc/matrix-synapse/workers/{n}.yaml"
            c.write_file(path, c.read_file(path) + "\n" + worker_extra)
        c.run(["systemctl", "restart", "matrix-synapse.target" if names else "matrix-synapse.service"])
    if names:
        wait_healthy(c, names)
    else:
        harness.wait_for_http(c, STANDIN_MAIN_URL, "/health", timeout=120)
    if jemalloc is not None and mapped(c, "matrix-synapse.service", "libjemalloc") != jemalloc:
        raise SystemExit(f"main's process {'has not' if jemalloc else 'has'} mapped libjemalloc, "
                         f"but jemalloc was to be {'on' if jemalloc else 'off'}")
    c.run("rm -f /etc/nginx/sites-enabled/default")
    c.write_file("/etc/nginx/sites-enabled/msw-bench", vhost)
    c.run(["nginx", "-t", "-q"])
    c.run(["systemctl", "reload-or-restart", "nginx.service"])
    harness.wait_for_http(c, f"http://127.0.0.1:{NGINX_PORT}", "/_matrix/client/versions", timeout=60)
    here = Path(__file__).resolve().parent
    for f in ("loadgen.py", "stats.py"):
        c.copy_in(here / f, f"{BENCH_DIR}/{f}")
    return names
