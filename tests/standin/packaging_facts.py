"""The facts of a matrix-synapse-py3 packaging that our package meets, read the same way from
Matrix.org's debian/ folder and from the stand-in's files, so the two can be compared.

Facts, not text: the unit's settings, each question's name, type and default, the order in
which ``config`` asks them, what ``postinst`` makes (the conf.d files and the keys they set,
the system user, the statoverrides), the directories shipped and the commands linked into
/usr/bin.  Comments, descriptions and the shell that implements them are left out.

Refresh the upstream extract (tests/standin/upstream-debian/facts.json) from a clone of
element-hq/synapse:

    /usr/bin/python3 tests/standin/packaging_facts.py upstream GIT_DIR [COMMIT]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
UPSTREAM = HERE / "upstream-debian" / "facts.json"
# The files of element-hq/synapse's debian/ folder the facts come from.
UPSTREAM_FILES = ("matrix-synapse.service", "templates", "matrix-synapse-py3.config",
                  "matrix-synapse-py3.postinst", "dirs", "matrix-synapse-py3.links")


def unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Each section's settings, every value of a key in order; comments and blanks left out."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def templates(text: str) -> dict[str, dict[str, str]]:
    """Each question's type and default (the descriptions are prose)."""
    found: dict[str, dict[str, str]] = {}
    for block in text.strip().split("\n\n"):
        fields = dict(re.findall(r"^(Template|Type|Default): *(.*)$", block, re.M))
        found[fields.pop("Template")] = fields
    return found


def config(text: str) -> list[str]:
    """The questions asked, with their priority, and db_go, in order."""
    return re.findall(r"^\s*(db_input \S+ \S+|db_go)\b", text, re.M)


def postinst(text: str) -> dict[str, object]:
    """What the configure step makes."""
    made = sorted(set(re.findall(r"/etc/matrix-synapse/conf\.d/(\w+\.yaml)", text))
                  | {name for name in re.findall(r'\$CONF_D/(\w+\.yaml)', text)})
    keys = sorted(set(re.findall(r"^(\w+): (.*)$", text, re.M)))
    adduser = re.search(r"adduser ((?:--[\w-]+ ?(?:/\S+ )?)+)", text)
    over = re.search(r"for \w+ in (/[^;]+); do", text)
    mode = re.search(r"--add .*? (0[0-7]{3}) ", text)
    return {
        "conf.d files made when missing": made,
        "top-level keys they set": [f"{k}: {v}" for k, v in keys],
        "adduser": adduser.group(1).split() if adduser else None,
        "statoverride directories": over.group(1).split() if over else None,
        "statoverride mode": mode.group(1) if mode else None,
        "asks debconf for the files' values": "manage_debconf.pl update" in text or "db_get" in text,
    }


def listing(text: str) -> list[str]:
    return sorted(line.strip() for line in text.splitlines() if line.strip())


def upstream_facts(files: dict[str, str]) -> dict[str, object]:
    return {
        "unit": unit(files["matrix-synapse.service"]),
        "templates": templates(files["templates"]),
        "config": config(files["matrix-synapse-py3.config"]),
        "postinst": postinst(files["matrix-synapse-py3.postinst"]),
        "dirs": listing(files["dirs"]),
        "usr/bin links": sorted(line.split()[1].rsplit("/", 1)[1]
                                for line in files["matrix-synapse-py3.links"].splitlines() if line.strip()),
    }


def standin_facts() -> dict[str, object]:
    build = (HERE / "build-standin").read_text(encoding="utf-8")
    links = re.search(r'USR_BIN_LINKS="([^"]*)"', build).group(1).split()
    dirs = re.search(r'install -d -m 0755 "\$root/etc/matrix-synapse" ([^\n]*\n[^\n]*)', build)
    return {
        "unit": unit((HERE / "files/lib/systemd/system/matrix-synapse.service").read_text(encoding="utf-8")),
        "templates": templates((HERE / "maintscripts/templates").read_text(encoding="utf-8")),
        "config": config((HERE / "maintscripts/config").read_text(encoding="utf-8")),
        "postinst": postinst((HERE / "maintscripts/postinst").read_text(encoding="utf-8")),
        "dirs": sorted(["etc/matrix-synapse", *(p.replace('"$root/', "").strip('"\\ ')
                                                 for p in dirs.group(1).split() if "$root" in p)]),
        "usr/bin links": sorted(links),
    }


def read_upstream(git_dir: str, commit: str) -> dict[str, object]:
    def show(name: str) -> str:
        return subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:debian/{name}"],
                              capture_output=True, text=True, check=True).stdout
    date = subprocess.run(["git", "--git-dir", git_dir, "show", "-s", "--format=%cs", commit],
                          capture_output=True, text=True, check=True).stdout.strip()
    full = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", commit],
                          capture_output=True, text=True, check=True).stdout.strip()
    return {"source": "https://github.com/element-hq/synapse, debian/ (" + ", ".join(UPSTREAM_FILES) + ")",
            "commit": full, "date": date,
            "license": "facts read from files under AGPL-3.0-or-later (debian/copyright); no text copied",
            "facts": upstream_facts({name: show(name) for name in UPSTREAM_FILES})}


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "upstream":
        data = read_upstream(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else "HEAD")
        UPSTREAM.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(UPSTREAM)
    elif sys.argv[1:] == ["standin"]:
        print(json.dumps(standin_facts(), indent=2, sort_keys=True))
    else:
        sys.exit(__doc__)
