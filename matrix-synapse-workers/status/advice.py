"""Pure: the advice texts and small formatters status's checks share."""

from __future__ import annotations

from ..core import paths

RECONFIGURE = f"dpkg-reconfigure {paths.PACKAGE}"
RESTART_ALL = f"systemctl restart {paths.TARGET_UNIT}"
CLUSTER_FILE = f"/{paths.CLUSTER_FILE}"
COPY_AGAIN = (f"copy /{paths.CLUSTER_DIR} again from the main host, keeping owners and modes "
              f"(rsync -a MAINHOST:/{paths.CLUSTER_DIR}/ /{paths.CLUSTER_DIR}/), then {RESTART_ALL}")



def octal(mode: int) -> str:
    """A file mode as ls and chmod spell it (0750, 2750)."""
    return f"{mode:04o}" if mode > 0o777 else f"{mode:03o}"
