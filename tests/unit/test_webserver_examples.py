"""The Apache, Caddy and HAProxy examples pass their server's own check, with the
package's rendered file where the example names it and a self-signed certificate
in place of the admin's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from support.vhosts import EXAMPLES
from support.webservers import APACHE_MODULES, apache_check, need
from test_webservers import write

CERT = "/etc/letsencrypt/live/matrix.example.org/"


def certificate(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "privkey.pem", directory / "fullchain.pem"
    subprocess.run([need("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=matrix.example.org", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return key, cert


#: The line an admin uncomments where admins reach Synapse's admin API.
ADMIN_LINE = {"apache": "#Include /etc/apache2/matrix-synapse-workers-admin.conf",
              "caddy": "#import /etc/caddy/matrix-synapse-workers-admin.caddy",
              "haproxy": "#use_backend msw_entry if { path_beg /_synapse/admin/ }"}


def example(name: str, server: str, admin: bool) -> str:
    """The example as shipped, or with its admin API line uncommented."""
    text = (EXAMPLES / name).read_text()
    assert ADMIN_LINE[server] in text
    return text.replace(ADMIN_LINE[server], ADMIN_LINE[server][1:]) if admin else text


@pytest.mark.parametrize("admin", [False, True])
def test_apache_example(tmp_path: Path, admin: bool) -> None:
    apache = need("apache2")
    etc = tmp_path / "apache2"
    shutil.copytree("/etc/apache2", etc, symlinks=True)
    for module in (*APACHE_MODULES, "ssl", "socache_shmcb"):
        for available in Path("/etc/apache2/mods-available").glob(f"{module}.*"):
            target = etc / "mods-enabled" / available.name
            if not target.exists():
                target.symlink_to(available)
    certificate(tmp_path)
    snippet = write(tmp_path, "apache", "small")
    text = example("apache-vhost.conf", "apache", admin)
    assert "Include /etc/apache2/matrix-synapse-workers.conf" in text and CERT in text
    (etc / "sites-enabled" / "matrix.conf").write_text(
        text.replace("/etc/apache2/matrix-synapse-workers", str(snippet.with_suffix("")))
        .replace(CERT, f"{tmp_path}/"))
    result = apache_check(apache, etc, tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("admin", [False, True])
def test_caddy_example(tmp_path: Path, admin: bool) -> None:
    caddy = need("caddy")
    snippet = write(tmp_path, "caddy", "small")
    text = example("Caddyfile", "caddy", admin)
    assert "import /etc/caddy/matrix-synapse-workers.caddy" in text
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(text.replace("/etc/caddy/matrix-synapse-workers", str(snippet.with_suffix(""))))
    result = subprocess.run([caddy, "validate", "--config", str(caddyfile), "--adapter", "caddyfile"],
                            capture_output=True, text=True, env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("admin", [False, True])
def test_haproxy_example(tmp_path: Path, admin: bool) -> None:
    haproxy = need("haproxy")
    key, cert = certificate(tmp_path)
    pem = tmp_path / "matrix.pem"
    pem.write_text(cert.read_text() + key.read_text())
    ours = write(tmp_path, "haproxy", "small")
    text = example("haproxy-frontend.cfg", "haproxy", admin)
    frontend = tmp_path / "haproxy.cfg"
    stock = Path("/etc/haproxy/haproxy.cfg").read_text()
    # As the example says: no chroot, where the Synapse sockets are not.
    assert "\tchroot /var/lib/haproxy\n" in stock
    frontend.write_text(stock.replace("\tchroot /var/lib/haproxy\n", "") + "\n"
                        + text.replace("/etc/haproxy/certs/matrix.example.org.pem", str(pem)))
    result = subprocess.run([haproxy, "-c", "-f", str(frontend), "-f", str(ours)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "[WARNING]" not in result.stderr, result.stderr
