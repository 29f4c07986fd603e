"""Load Synapse config file sets with Synapse's own loader; run with Synapse's python.

Run as a script by Synapse's interpreter (it imports Synapse, not this
package): the apply engine checks every file set with it before writing, and
the tests load every preset with it.

Reads a JSON list of ``[label, [config paths...]]`` on stdin and prints a JSON
object ``{label: "OK" | "<error text>"}``.  Arguments name signing key files to
create first when missing (Synapse's loader reads the key).  One process loads them all, because
importing Synapse costs seconds and a preset has dozens of workers.

``--throwaway-key DIR``: when the signing key a file set names does not exist
(Synapse has never started: its unit's ExecStartPre makes the key), load that
set once more with one more config file, last, that points ``signing_key_path``
at a key made in DIR; the key Synapse would read is reported under
``__missing_key__``.  A key that exists is read as it is, so a broken one is
still refused.

Synapse's loader makes directories it finds missing (the media store, with
``ensure_directory``).  The check lets it, so a path Synapse could not make is
still refused, and then removes what it made, when empty: Synapse makes them
again when it starts, and a check leaves nothing behind on the host (purge
would not remove it).
"""

import json
import os
import sys

import pg_limit  # beside this script, which Python puts first on sys.path
from signedjson.key import generate_signing_key, write_signing_keys

from synapse.config._base import Config, ConfigError, find_config_files, read_config_files
from synapse.config.homeserver import HomeServerConfig

#: Directories Synapse's loader made during the check, in the order made.
MADE: list = []


def _recording(ensure_directory):
    def wrapper(cls, dir_path):
        path = os.path.abspath(dir_path)
        missing = []
        while path and not os.path.lexists(path):
            missing.append(path)
            path = os.path.dirname(path)
        try:
            return ensure_directory.__func__(cls, dir_path)
        finally:
            MADE.extend(p for p in reversed(missing) if os.path.isdir(p))
    return classmethod(wrapper)


Config.ensure_directory = _recording(Config.ensure_directory)


def remove_made() -> None:
    """Remove what the loader made, deepest first, where nothing was put in it."""
    for path in reversed(MADE):
        try:
            os.rmdir(path)
        except OSError:
            pass


def load(config_paths: list):
    """The loaded config, or the error text Synapse gave."""
    argv = []
    for path in config_paths:
        argv += ["--config-path", path]
    try:
        return HomeServerConfig.load_config("matrix-synapse-workers check", argv)
    except ConfigError as exc:
        return f"ConfigError: {exc} {list(exc.path or [])}"
    except Exception as exc:  # anything else Synapse raises on a bad file set
        return f"{type(exc).__name__}: {exc}"


def configured_key_path(config_paths: list) -> str | None:
    """The signing key file Synapse would read for this file set (its own default too)."""
    try:
        files = find_config_files(config_paths)
        config = read_config_files(files)
    except Exception:  # an unreadable set: load() reports it
        return None
    path = config.get("signing_key_path")
    if path is None and files:
        directory = os.path.abspath(os.path.dirname(files[-1]))
        path = os.path.join(directory, f"{config.get('server_name')}.signing.key")
    return path if isinstance(path, str) else None


def with_throwaway_key(config_paths: list, directory: str) -> list:
    """config_paths plus a last file pointing signing_key_path at a throwaway key in directory."""
    key = os.path.join(directory, "throwaway.signing.key")
    if not os.path.exists(key):
        with open(key, "w") as handle:
            write_signing_keys(handle, [generate_signing_key("a_check")])
    override = os.path.join(directory, "throwaway-key.yaml")
    with open(override, "w") as handle:
        json.dump({"signing_key_path": key}, handle)  # JSON is YAML
    return [*config_paths, override]


def database_limits(config) -> object:
    """PostgreSQL's connection limit, asked with the configuration's own credentials."""
    try:
        database = config.database.databases[0].config
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return pg_limit.limits(database)


def main() -> None:
    args = sys.argv[1:]
    ask_database = "--database-limits" in args
    throwaway_dir = None
    if "--throwaway-key" in args:
        at = args.index("--throwaway-key")
        throwaway_dir = args[at + 1]
        del args[at:at + 2]
    for key_path in [a for a in args if a != "--database-limits"]:
        if not os.path.exists(key_path):
            with open(key_path, "w") as handle:
                write_signing_keys(handle, [generate_signing_key("a_test")])
    sets = json.load(sys.stdin)
    results = {}
    first = None
    missing_keys = set()
    for label, config_paths in sets:
        key = configured_key_path(config_paths)
        if throwaway_dir is not None and key is not None and not os.path.exists(key):
            missing_keys.add(key)
            config_paths = with_throwaway_key(config_paths, throwaway_dir)
        loaded = load(config_paths)
        if isinstance(loaded, str):
            results[label] = loaded
            continue
        results[label] = f"OK {loaded.worker.instance_name}"
        if first is None:
            first = loaded
    if missing_keys:
        results["__missing_key__"] = sorted(missing_keys)
    if ask_database and first is not None:
        # Every set shares homeserver.yaml's database: the first loaded one says where.
        results["__database__"] = database_limits(first)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    try:
        main()
    finally:
        remove_made()
