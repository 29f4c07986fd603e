"""Minimal site configurations around the rendered files, for each server's own check.

Each server runs unprivileged-friendly: a loopback port, its pid and logs in a
temporary directory, nothing of the host's configuration but its modules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

APACHE_MODULES = ("proxy", "proxy_http", "proxy_balancer", "lbmethod_bybusyness",
                  "slotmem_shm", "headers", "rewrite")


def need(binary: str) -> str:
    found = shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        if os.environ.get("CI") or os.environ.get("MSW_REQUIRE_PACKAGE"):
            pytest.fail(f"{binary} is not installed (scripts/test installs it)")
        pytest.skip(f"{binary} is not installed")
    return found


def apache_check(apache: str, etc: Path, scratch: Path) -> subprocess.CompletedProcess[str]:
    """``apache2 -t`` on the configuration in ``etc``, with Debian's environment variables
    pointed at ``scratch``."""
    env = dict(os.environ, APACHE_RUN_DIR=str(scratch), APACHE_LOCK_DIR=str(scratch),
               APACHE_PID_FILE=str(scratch / "pid"), APACHE_LOG_DIR=str(scratch),
               APACHE_RUN_USER="www-data", APACHE_RUN_GROUP="www-data")
    return subprocess.run([apache, "-d", str(etc), "-f", str(etc / "apache2.conf"), "-t"],
                          capture_output=True, text=True, env=env)


def admin_of(snippet: Path) -> Path | None:
    """The admin API's file written beside ``snippet`` (Apache's and Caddy's), if any."""
    admin = snippet.with_name(f"{snippet.stem}-admin{snippet.suffix}")
    return admin if admin.is_file() else None


def _includes(word: str, snippet: Path, indent: str) -> str:
    """``snippet``, and after it the admin API's file, as an admin names them."""
    return "\n".join(f"{indent}{word} {f}" for f in (snippet, admin_of(snippet)) if f is not None)


def apache_site(directory: Path, snippet: Path, port: int) -> Path:
    loads = "\n".join(f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so"
                      for m in APACHE_MODULES)
    site = directory / "apache2.conf"
    site.write_text(f"""ServerRoot /etc/apache2
ServerName localhost
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
{loads}
PidFile {directory}/httpd.pid
ErrorLog {directory}/error.log
DefaultRuntimeDir {directory}
Mutex file:{directory}
Listen 127.0.0.1:{port}
<VirtualHost 127.0.0.1:{port}>
{_includes("Include", snippet, "    ")}
</VirtualHost>
""")
    return site


def caddy_site(directory: Path, snippet: Path, port: int) -> Path:
    site = directory / "Caddyfile"
    site.write_text(f"""{{
\tadmin off
\tauto_https off
\tstorage file_system {directory}/data
}}
http://127.0.0.1:{port} {{
{_includes("import", snippet, chr(9))}
}}
""")
    return site


def haproxy_site(directory: Path, port: int) -> Path:
    site = directory / "haproxy.cfg"
    site.write_text(f"""global
    pidfile {directory}/haproxy.pid
defaults
    mode http
    timeout connect 5s
    timeout client 50s
    timeout server 50s
frontend www
    bind 127.0.0.1:{port}
    use_backend msw_entry if {{ path_beg /_matrix/ /_synapse/client/ /_synapse/admin/ }}
""")
    return site
