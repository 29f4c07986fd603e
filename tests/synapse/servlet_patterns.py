"""Print the URL patterns Synapse registers on a generic worker; run with Synapse's python.

Arguments: the worker's config paths (as its unit passes them).  Handlers are
stand-ins (nothing is started, no database); the configuration is the real one,
so servlets that Synapse registers only on main, or only under some setting,
come out exactly as on a running worker.  Prints a JSON list of
``[method, regex, servlet]`` for the client resource (``/_matrix/client``),
``/_synapse/client``, the federation resource and the admin API (main's, and
on a worker the media admin servlets a media repository adds).
"""

import json
import os
import sys
from unittest import mock

from signedjson.key import generate_signing_key, write_signing_keys

from synapse.config.homeserver import HomeServerConfig
from synapse.federation.transport.server import register_servlets as register_federation
from synapse.rest import ClientRestResource, admin


class Recorder:
    def __init__(self) -> None:
        self.found: list[tuple[str, str, str]] = []

    def register_paths(self, method, patterns, callback, servlet_classname):
        for pattern in patterns:
            self.found.append((method, pattern.pattern, servlet_classname))


def main() -> None:
    key, *paths = sys.argv[1:]
    if not os.path.exists(key):
        with open(key, "w") as handle:
            write_signing_keys(handle, [generate_signing_key("a_test")])
    argv = [a for p in paths for a in ("--config-path", p)]
    config = HomeServerConfig.load_config("servlet patterns", argv)
    hs = mock.MagicMock()
    hs.config = config
    hs.hostname = config.server.server_name
    if config.worker.worker_app is None:
        # Older releases assert that main's device handler is the writer's class.
        from synapse.handlers.device import DeviceHandler
        hs.get_device_handler.return_value = mock.MagicMock(spec=DeviceHandler)
    recorder = Recorder()
    ClientRestResource.register_servlets(recorder, hs)
    register_federation(hs, recorder, authenticator=mock.MagicMock(),
                        ratelimiter=mock.MagicMock(), servlet_groups=None)
    if config.worker.worker_app is None:
        admin.register_servlets(hs, recorder)
    elif config.media.can_load_media_repo:
        # What synapse/app/generic_worker.py adds with the media resource.
        admin.register_servlets_for_media_repo(hs, recorder)
    json.dump(recorder.found, sys.stdout)


if __name__ == "__main__":
    main()
