"""Constants and small helpers the booted tests share.

They live here, not in conftest.py: with the whole tests/ tree collected,
``import conftest`` finds whichever conftest.py came first on sys.path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_STANDIN = REPO / "tests" / "standin" / "build-standin"
BUILD_DEB = REPO / "scripts" / "build-deb"
# The Synapse the stand-in package carries; >= 1.89 for the all-socket layout.
STANDIN_VERSION = os.environ.get("MSW_STANDIN_VERSION", "1.163.2")
# The stand-in's Synapse, as matrix-synapse-py3 installs it: port 8008 on loopback.
SERVER_NAME = "example.test"
STANDIN_MAIN_URL = "http://127.0.0.1:8008"


def container_name(node_name: str) -> str:
    """A container name from a test's name."""
    return re.sub(r"^test_", "", node_name)


# Two hosts joined by a private network of their own (tests/booted/twohost.py).
# The addresses exist only inside the two containers' network namespaces.
MAIN_HOST_ADDRESS = "10.99.0.1"
WORKER_HOST_ADDRESS = "10.99.0.2"
WORKER_HOST_LABEL = "hostb"

# nginx in a container: the admin's vhost that includes our snippet, and its address.
NGINX = "http://127.0.0.1:8080"
VHOST = """server {
    listen 127.0.0.1:8080;
    server_name example.test;
    include snippets/matrix-synapse-workers.conf;
}
"""

