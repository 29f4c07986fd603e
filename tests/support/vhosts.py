"""The example nginx vhosts (examples/nginx-vhost-*.conf) in a whole nginx configuration
laid out as Debian's, with the package's rendered files, for ``nginx -t``.

Used by tests/unit/test_examples.py (the host's nginx) and
tests/package/test_deb_examples.py (trixie's nginx in a chroot).  Only the
certificate paths are changed (to a self-signed pair made here); the rest of
each example is used as shipped.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

from matrix_synapse_workers.core.plan import Plan
from matrix_synapse_workers.render.files import nginx_files

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
#: Example file -> the release whose nginx it is written for.
VHOSTS = {"bookworm": "nginx-vhost-bookworm.conf", "trixie": "nginx-vhost-trixie.conf"}
#: ``http2 on;`` is known from nginx 1.25.1 on; ``listen ... http2`` is deprecated there.
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)
_CERT = re.compile(r"/etc/letsencrypt/live/[^/;]+/(fullchain|privkey)\.pem")


def release_for(version: tuple[int, ...]) -> str:
    """The example written for an nginx of this version."""
    return "trixie" if version >= HTTP2_DIRECTIVE_SINCE else "bookworm"


def nginx_version(output: str) -> tuple[int, ...]:
    """From ``nginx -v``'s output: ``nginx version: nginx/1.22.1`` -> (1, 22, 1)."""
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", output)
    assert match, output
    return tuple(int(part) for part in match.groups())


def self_signed(dest: Path) -> None:
    """cert.pem and key.pem in dest, for the examples' server names."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=matrix.example.org",
                    "-keyout", str(dest / "key.pem"), "-out", str(dest / "cert.pem")],
                   check=True, capture_output=True)


def write_tree(dest: Path, seen_as: PurePosixPath, example: str, plan: Plan, root_user: bool) -> PurePosixPath:
    """Write nginx.conf, conf.d/, snippets/, sites-enabled/ and a certificate under dest,
    which nginx sees as seen_as (the same directory, or its path inside a chroot).
    Returns nginx.conf as nginx sees it."""
    http, snippet = nginx_files(plan)
    for sub in ("conf.d", "snippets", "sites-enabled", "certs", "temp"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    (dest / "conf.d" / PurePosixPath(http.path).name).write_text(http.content)
    (dest / "snippets" / PurePosixPath(snippet.path).name).write_text(snippet.content)
    self_signed(dest / "certs")
    vhost = _CERT.sub(lambda m: str(seen_as / "certs" / ("cert.pem" if m[1] == "fullchain" else "key.pem")),
                      example)
    assert vhost != example, "the example names no certificate"
    (dest / "sites-enabled" / "matrix").write_text(vhost)
    temp = "".join(f"    {kind}_temp_path {seen_as}/temp/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (dest / "nginx.conf").write_text(
        ("user root;\n" if root_user else "")
        + f"pid {seen_as}/nginx.pid;\nerror_log {seen_as}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}"
        f"    include {seen_as}/conf.d/*.conf;\n    include {seen_as}/sites-enabled/*;\n}}\n")
    return seen_as / "nginx.conf"


def problems(stderr: str) -> list[str]:
    """nginx -t's warnings and errors (it prints its verdict lines as [notice]... or plain)."""
    return [line for line in stderr.splitlines() if "[warn]" in line or "[emerg]" in line]
