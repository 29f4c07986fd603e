"""Apache, Caddy and HAProxy files from the one routing model, checked by the servers themselves."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from matrix_synapse_workers.core.plan import Plan, plan_workers
from matrix_synapse_workers.core.selection import select
from matrix_synapse_workers.render.apache import apache_files
from matrix_synapse_workers.render.caddy import caddy_files
from matrix_synapse_workers.render.haproxy import haproxy_files
from matrix_synapse_workers.render.routing import nginx_model
from support.webservers import APACHE_MODULES, apache_check, apache_site, caddy_site, haproxy_site, need

#: "single": no workers, as after package removal (everything to main).
PRESETS = ("single", "minimal", "small", "one_of_each")
RENDERERS = {"apache": apache_files, "caddy": caddy_files, "haproxy": haproxy_files}


def plan(preset: str) -> Plan:
    return Plan(()) if preset == "single" else Plan(plan_workers(select(preset=preset)))


def write(directory: Path, server: str, preset: str, mas: bool = False) -> Path:
    """Every file of ``server`` in ``directory``; the path of the first (the one the
    admin's site names; the admin API's is found beside it by support.webservers)."""
    files = RENDERERS[server](plan(preset), None, mas)
    for rendered in files:
        (directory / rendered.path.name).write_text(rendered.content)
    return directory / files[0].path.name


@pytest.mark.parametrize("server", sorted(RENDERERS))
def test_every_pool_and_class_appears(server: str) -> None:
    """The same routing model as nginx: each pool by its name, each class by its regex."""
    model = nginx_model(plan("one_of_each"))
    content = "".join(f.content for f in RENDERERS[server](plan("one_of_each")))
    # The admin API's pools too (nginx's admin snippet): each server routes it.
    for upstream in model.upstreams:
        assert upstream.name in content or server == "caddy"
        for address in upstream.servers:
            assert address.split()[0].removeprefix("unix:") in content
    for location in model.locations + model.admin_locations:
        assert location.regex in content


def test_socket_backends_in_each_idiom() -> None:
    small = plan("small")
    assert 'BalancerMember "unix:/run/matrix-synapse/main.sock|http://main"' in \
        apache_files(small)[0].content
    assert "unix//run/matrix-synapse/main.sock" in caddy_files(small)[0].content
    assert "server main /run/matrix-synapse/main.sock check" in haproxy_files(small)[0].content


@pytest.mark.parametrize("preset", PRESETS)
def test_apache_accepts(tmp_path: Path, preset: str) -> None:
    apache = need("apache2")
    site = apache_site(tmp_path, write(tmp_path, "apache", preset), 18482)
    result = subprocess.run([apache, "-t", "-f", str(site)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("preset", PRESETS)
def test_caddy_accepts(tmp_path: Path, preset: str) -> None:
    caddy = need("caddy")
    site = caddy_site(tmp_path, write(tmp_path, "caddy", preset), 18481)
    result = subprocess.run([caddy, "validate", "--config", str(site), "--adapter", "caddyfile"],
                            capture_output=True, text=True, env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("preset", PRESETS)
def test_haproxy_accepts(tmp_path: Path, preset: str) -> None:
    haproxy = need("haproxy")
    site = haproxy_site(tmp_path, 18480)
    ours = write(tmp_path, "haproxy", preset)
    result = subprocess.run([haproxy, "-c", "-f", str(site), "-f", str(ours)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "[WARNING]" not in result.stderr, result.stderr


def test_inside_debians_stock_configurations(tmp_path: Path) -> None:
    """As an admin adds them: in Debian's default Apache vhost (the modules a2enmod'ed),
    after Debian's haproxy.cfg, and in Debian's Caddyfile beside its file_server."""
    import shutil
    apache, haproxy, caddy = need("apache2"), need("haproxy"), need("caddy")
    etc = tmp_path / "apache2"
    shutil.copytree("/etc/apache2", etc, symlinks=True)
    for module in APACHE_MODULES:
        for available in Path("/etc/apache2/mods-available").glob(f"{module}.*"):
            target = etc / "mods-enabled" / available.name
            if not target.exists():
                target.symlink_to(available)
    site = etc / "sites-available" / "000-default.conf"
    snippet = write(tmp_path, "apache", "one_of_each")
    site.write_text(site.read_text().replace("</VirtualHost>", f"Include {snippet}\n</VirtualHost>"))
    result = apache_check(apache, etc, tmp_path)
    assert result.returncode == 0, result.stderr
    ours = write(tmp_path, "haproxy", "one_of_each")
    result = subprocess.run([haproxy, "-c", "-f", "/etc/haproxy/haproxy.cfg", "-f", str(ours)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    snippet = write(tmp_path, "caddy", "one_of_each")
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(Path("/etc/caddy/Caddyfile").read_text().replace(
        "\tfile_server\n", f"\tfile_server\n\timport {snippet}\n"))
    assert f"import {snippet}" in caddyfile.read_text()
    result = subprocess.run([caddy, "validate", "--config", str(caddyfile), "--adapter", "caddyfile"],
                            capture_output=True, text=True, env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]


def test_with_mas_each_server_accepts_and_sends_its_path_to_main(tmp_path: Path) -> None:
    """With MAS, the classes left to it are not routed and /_synapse/mas/ reaches main."""
    checks = {
        "apache": lambda f: [need("apache2"), "-t", "-f", str(apache_site(tmp_path, f, 18482))],
        "caddy": lambda f: [need("caddy"), "validate", "--adapter", "caddyfile",
                            "--config", str(caddy_site(tmp_path, f, 18481))],
        "haproxy": lambda f: [need("haproxy"), "-c", "-f", str(haproxy_site(tmp_path, 18480)), "-f", str(f)],
    }
    for server, command in checks.items():
        ours = write(tmp_path, server, "one_of_each", mas=True)
        assert "/_synapse/mas/" in ours.read_text()
        result = subprocess.run(command(ours), capture_output=True, text=True, env={"HOME": str(tmp_path)})
        assert result.returncode == 0, (server, result.stderr[-2000:])
