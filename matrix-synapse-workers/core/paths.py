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
#: Directories the apply made for Synapse before its first start (one path a line): purge
#: removes those still empty.
MADE_DIRECTORIES = STATE_DIR / "made-directories"
#: Why the last install or reconfigure configured nothing (one line); a successful apply removes it.
NOT_CONFIGURED = STATE_DIR / "not-configured"
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
# The admin's guide as installed (dh_compress compresses it: it is over 4 kB);
# advice points here, never at the source tree's README.
README_DEBIAN = PurePosixPath("usr/share/doc/matrix-synapse-workers/README.Debian.gz")
TMPFILES_OVERRIDE = PurePosixPath("etc/tmpfiles.d/matrix-synapse-workers.conf")
NGINX_DIR = PurePosixPath("etc/nginx")
# http context: Debian's nginx.conf includes conf.d/*.conf inside http {}.
NGINX_HTTP_CONF = NGINX_DIR / "conf.d" / f"{PACKAGE}.conf"
# server context: snippets/ is included by nobody until the admin's vhost does.
NGINX_SNIPPET = NGINX_DIR / "snippets" / f"{PACKAGE}.conf"
# The other web servers, each in its own idiom; the admin's site names the file.
APACHE_DIR = PurePosixPath("etc/apache2")
# Included inside the admin's <VirtualHost> (conf-available/ would be server-wide).
APACHE_CONF = APACHE_DIR / f"{PACKAGE}.conf"
# Included after it where admins reach Synapse's admin API (as nginx's admin snippet).
APACHE_ADMIN_CONF = APACHE_DIR / f"{PACKAGE}-admin.conf"
CADDY_DIR = PurePosixPath("etc/caddy")
# Imported inside the admin's site block of the Caddyfile.
CADDY_SNIPPET = CADDY_DIR / f"{PACKAGE}.caddy"
# Imported too in the site block where admins reach Synapse's admin API.
CADDY_ADMIN_SNIPPET = CADDY_DIR / f"{PACKAGE}-admin.caddy"
HAPROXY_DIR = PurePosixPath("etc/haproxy")
# Loaded after haproxy.cfg (a second -f), it holds its own frontend and backends.
HAPROXY_CONF = HAPROXY_DIR / f"{PACKAGE}.cfg"
# server context, for the server block where admins reach Synapse's admin API.
NGINX_ADMIN_SNIPPET = NGINX_DIR / "snippets" / f"{PACKAGE}-admin.conf"

# Absolute runtime paths written into configuration.
SOCKET_DIR = PurePosixPath("/run/matrix-synapse")
MAIN_REPLICATION_SOCKET = SOCKET_DIR / "replication.sock"
MAIN_HTTP_SOCKET = SOCKET_DIR / "main.sock"
LOG_DIR = PurePosixPath("/var/log/matrix-synapse")
# Synapse's working directory (the units' WorkingDirectory=): relative paths
# in its configuration start here.
SYNAPSE_WORKDIR = PurePosixPath("/var/lib/matrix-synapse")
# Synapse's default media_store_path, relative to its working directory.
DEFAULT_MEDIA_STORE = "media_store"
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

# The dedicated instance's name; its files and units come from redisserver.py
# (redis-server@matrix-synapse or valkey-server@matrix-synapse).
REDIS_INSTANCE = "matrix-synapse"
# In guide mode, the password of an admin's Redis that requires one (requirepass),
# copied for Synapse's redis.password_path: root:matrix-synapse 0640.
REDIS_GUIDE_PASSWORD = SYNAPSE_ETC / "redis-guide-password"
REDIS_GUIDE_PASSWORD_MODE = 0o640

# systemd units.
MAIN_UNIT = "matrix-synapse.service"
TARGET_UNIT = "matrix-synapse.target"
WORKER_UNIT_TEMPLATE = "matrix-synapse-worker@{name}.service"
# The sandbox drop-ins this package renders (relative to ROOT): one per worker,
# one for main.
SYSTEMD_ETC = PurePosixPath("etc/systemd/system")
SANDBOX_DROPIN_NAME = f"{PACKAGE}.conf"
MAIN_SANDBOX_DROPIN = SYSTEMD_ETC / f"{MAIN_UNIT}.d" / f"{PACKAGE}-sandbox.conf"


def worker_http_socket(name: str) -> PurePosixPath:
    return SOCKET_DIR / f"{name}.sock"


def worker_replication_socket(name: str) -> PurePosixPath:
    return SOCKET_DIR / f"{name}-replication.sock"


def worker_sandbox_dropin(name: str) -> PurePosixPath:
    return SYSTEMD_ETC / f"{WORKER_UNIT_TEMPLATE.format(name=name)}.d" / SANDBOX_DROPIN_NAME


def worker_of_sandbox_dropin(path: PurePosixPath) -> str | None:
    """The worker whose sandbox drop-in ``path`` is, or None."""
    prefix, _, rest = path.parent.name.partition("@")
    if (path.parent.parent == SYSTEMD_ETC and path.name == SANDBOX_DROPIN_NAME
            and prefix == "matrix-synapse-worker" and rest.endswith(".service.d")):
        return rest[:-len(".service.d")] or None
    return None
