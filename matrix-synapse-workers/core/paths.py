"""Every fixed path and name the package uses, in one place.

Paths under /etc and /var are given relative to a root directory so that the
same code renders into a test directory or into ``/``.  Runtime paths under
/run are absolute: they are written into configuration files, never created
by the renderer.
"""

from pathlib import PurePosixPath

PACKAGE = "matrix-synapse-workers"

# Relative to ROOT.
SYNAPSE_ETC = PurePosixPath("etc/matrix-synapse")
HOMESERVER_YAML = SYNAPSE_ETC / "homeserver.yaml"
CONF_D = SYNAPSE_ETC / "conf.d"
WORKERS_DIR = SYNAPSE_ETC / "workers"
WORKER_LOGS_DIR = SYNAPSE_ETC / "worker-logs"
SHARED_CONF = CONF_D / "workers.yaml"
REDIS_CONF_D = CONF_D / "redis.yaml"
STATE_DIR = PurePosixPath("var/lib/matrix-synapse-workers")
# What the postinst last applied (key=value lines, see system/applied.py); debian/config reads it too.
APPLIED_RECORD = STATE_DIR / "applied"
#: The answers an apply of the postinst is applying; there only until it is recorded.
PENDING_ANSWERS = STATE_DIR / "applying"
#: The service actions an apply owes (JSON); there only until it has taken them.
SERVICES_OWED = STATE_DIR / "services-owed"
# Prometheus file_sd targets, one per Synapse process, when metrics are on (main host only).
PROMETHEUS_TARGETS = STATE_DIR / "prometheus-targets.yaml"
# dpkg's database of statoverrides (the format of `dpkg-statoverride --list`).
STATOVERRIDE_DB = PurePosixPath("var/lib/dpkg/statoverride")
# Written on the main host once workers run on other machines; the admin copies
# the whole directory to each worker host.
CLUSTER_DIR = SYNAPSE_ETC / "cluster"
CLUSTER_FILE = CLUSTER_DIR / "cluster.yaml"
REPLICATION_SECRET = CLUSTER_DIR / "replication-secret"
REDIS_PASSWORD = CLUSTER_DIR / "redis-password"
# Present on a worker host: the drop-in's ConditionPathExists keeps main from starting.
WORKER_HOST_MARK = STATE_DIR / "worker-host"
TMPFILES_OVERRIDE = PurePosixPath("etc/tmpfiles.d/matrix-synapse-workers.conf")
NGINX_DIR = PurePosixPath("etc/nginx")
# http context: Debian's nginx.conf includes conf.d/*.conf inside http {}.
NGINX_HTTP_CONF = NGINX_DIR / "conf.d" / f"{PACKAGE}.conf"
# server context: snippets/ is included by nobody until the admin's vhost does.
NGINX_SNIPPET = NGINX_DIR / "snippets" / f"{PACKAGE}.conf"

# Absolute runtime paths written into configuration.
SOCKET_DIR = PurePosixPath("/run/matrix-synapse")
MAIN_REPLICATION_SOCKET = SOCKET_DIR / "replication.sock"
MAIN_HTTP_SOCKET = SOCKET_DIR / "main.sock"
LOG_DIR = PurePosixPath("/var/log/matrix-synapse")
SYNAPSE_VENV = PurePosixPath("/opt/venvs/matrix-synapse")

# Users, groups and modes.
SYNAPSE_USER = "matrix-synapse"
DEFAULT_SOCKET_GROUP = "clubmatrix"
DEFAULT_WEB_USER = "www-data"
# setgid so every socket Synapse creates inherits the socket group.
SOCKET_DIR_MODE = 0o2750
HTTP_SOCKET_MODE = 0o660
# Only Synapse processes (all running as matrix-synapse) talk replication.
REPLICATION_SOCKET_MODE = 0o600

# The dedicated Redis instance, run by Debian's redis-server@.service.
REDIS_INSTANCE = "matrix-synapse"
REDIS_INSTANCE_CONF = PurePosixPath(f"etc/redis/redis-{REDIS_INSTANCE}.conf")
REDIS_INSTANCE_SOCKET = PurePosixPath(f"/run/redis-{REDIS_INSTANCE}/redis-server.sock")
# requirepass for the dedicated instance, written once with the password (0640 redis).
REDIS_INSTANCE_AUTH_CONF = PurePosixPath(f"etc/redis/redis-{REDIS_INSTANCE}-auth.conf")
REDIS_GUIDE_CONF = PurePosixPath("etc/redis/redis.conf")
REDIS_GUIDE_SOCKET = PurePosixPath("/run/redis/redis-server.sock")
REDIS_UNIT = f"redis-server@{REDIS_INSTANCE}.service"
GUIDE_REDIS_UNIT = "redis-server.service"

# systemd units.
MAIN_UNIT = "matrix-synapse.service"
TARGET_UNIT = "matrix-synapse.target"
WORKER_UNIT_TEMPLATE = "matrix-synapse-worker@{name}.service"


def worker_http_socket(name: str) -> PurePosixPath:
    return SOCKET_DIR / f"{name}.sock"


def worker_replication_socket(name: str) -> PurePosixPath:
    return SOCKET_DIR / f"{name}-replication.sock"
