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


def load(config_paths: list) -> str:
    argv = []
    for path in config_paths:
        argv += ["--config-path", path]
    try:
        config = HomeServerConfig.load_config("matrix-synapse-workers test", argv)
    except ConfigError as exc:
        return f"ConfigError: {exc} {list(exc.path or [])}"
    except Exception as exc:  # anything else Synapse raises on a bad file set
        return f"{type(exc).__name__}: {exc}"
    return f"OK {config.worker.instance_name}"


def main() -> None:
    for key_path in sys.argv[1:]:
        if not os.path.exists(key_path):
            with open(key_path, "w") as handle:
                write_signing_keys(handle, [generate_signing_key("a_test")])
    results = {label: load(config_paths) for label, config_paths in json.load(sys.stdin)}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
