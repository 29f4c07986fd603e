"""Ask PostgreSQL for its connection limit; run with Synapse's python (it has psycopg2).

Reads Synapse's ``database`` config (JSON) on stdin and prints
``{"max_connections": N, "reserved": M}`` or ``{"error": "..."}``.  The apply
engine's check (synapse_check.py) and ``matrix-synapse-workers status`` use
it, with the configuration's own credentials, as the user Synapse runs as.
"""

import json
import sys


def limits(database: dict) -> object:
    """PostgreSQL's max_connections and superuser_reserved_connections, or why not."""
    try:
        if database.get("name") != "psycopg2":
            return "not PostgreSQL"
        import psycopg2

        args = {k: v for k, v in (database.get("args") or {}).items() if not k.startswith("cp_")}
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
        return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


if __name__ == "__main__":
    found = limits(json.load(sys.stdin))
    json.dump(found if isinstance(found, dict) else {"error": found}, sys.stdout)
