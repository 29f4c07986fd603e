"""Load Synapse config file sets with Synapse's own loader; run with Synapse's python.

Run as a script by Synapse's interpreter (it imports Synapse, not this
package): the apply engine checks every file set with it before writing, and
the tests load every preset with it.

Reads a JSON list of ``[label, [config paths...]]`` on stdin and prints a JSON
object ``{label: "OK" | "<error text>"}``.  Arguments name signing key files to
create first when missing (Synapse's loader reads the key).  One process loads them all, because
importing Synapse costs seconds and a preset has dozens of workers.
"""

import json
import os
import sys

from signedjson.key import generate_signing_key, write_signing_keys

from synapse.config._base import ConfigError
from synapse.config.homeserver import HomeServerConfig


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


def database_limits(config) -> object:
    """PostgreSQL's connection limit, asked with the configuration's own credentials."""
    try:
        database = config.database.databases[0].config
        if database.get("name") != "psycopg2":
            return "not PostgreSQL"
        import psycopg2

        args = {k: v for k, v in database.get("args", {}).items() if not k.startswith("cp_")}
        args.setdefault("connect_timeout", 5)
        conn = psycopg2.connect(**args)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW max_connections")
                max_connections = int(cursor.fetchone()[0])
                cursor.execute("SHOW superuser_reserved_connections")
                reserved = int(cursor.fetchone()[0])
        finally:
            conn.close()
        return {"max_connections": max_connections, "reserved": reserved}
    except Exception as exc:  # unreachable database, no psycopg2: the limit stays unknown
        return f"{type(exc).__name__}: {exc}".strip()[:300]


def main() -> None:
    ask_database = "--database-limits" in sys.argv[1:]
    for key_path in [a for a in sys.argv[1:] if a != "--database-limits"]:
        if not os.path.exists(key_path):
            with open(key_path, "w") as handle:
                write_signing_keys(handle, [generate_signing_key("a_test")])
    sets = json.load(sys.stdin)
    results = {}
    first = None
    for label, config_paths in sets:
        loaded = load(config_paths)
        if isinstance(loaded, str):
            results[label] = loaded
            continue
        results[label] = f"OK {loaded.worker.instance_name}"
        if first is None:
            first = loaded
    if ask_database and first is not None:
        # Every set shares homeserver.yaml's database: the first loaded one says where.
        results["__database__"] = database_limits(first)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
