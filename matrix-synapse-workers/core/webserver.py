"""Pure: which web server is in front of Synapse, chosen or detected.

>>> parse_web_server("Apache")
<WebServer.APACHE: 'apache'>
>>> parse_web_server("apache2"), debconf_value(WebServer.APACHE)
(<WebServer.APACHE: 'apache'>, 'apache2')
>>> detect({"nginx", "apache"}, {"apache"})
<WebServer.APACHE: 'apache'>
>>> detect({"caddy", "haproxy"}, set())
<WebServer.CADDY: 'caddy'>
>>> detect({"haproxy"}, set())
<WebServer.HAPROXY: 'haproxy'>
>>> detect(set(), set())
<WebServer.NGINX: 'nginx'>
>>> web_user_for(WebServer.CADDY, "www-data"), web_user_for(WebServer.NGINX, "haproxy")
('caddy', 'www-data')
>>> web_user_for(WebServer.CADDY, "proxy"), web_user_for(WebServer.NONE, "www-data")
('proxy', 'www-data')
"""

from __future__ import annotations

from enum import Enum
from typing import AbstractSet

from .errors import SelectionError


class WebServer(Enum):
    NGINX = "nginx"
    APACHE = "apache"
    CADDY = "caddy"
    HAPROXY = "haproxy"
    #: A proxy of the admin's own: no routing files, no reload.
    NONE = "none"


WEB_SERVER_CHOICES = ", ".join(s.value for s in WebServer)
#: The debconf answer that leaves the choice to detection (:func:`detect`).
AUTO = "auto"
#: Debian's package names where they differ from ours: what a Debian admin types.
_PACKAGE_NAMES = {WebServer.APACHE: "apache2"}
#: The debconf question's choices, in template order.
DEBCONF_CHOICES = (AUTO, *(_PACKAGE_NAMES.get(s, s.value) for s in WebServer))
#: When none is installed (nothing is written until it is).
DEFAULT = WebServer.NGINX
#: Among several installed and serving (or none serving), the first of these.
_ORDER = (WebServer.NGINX, WebServer.APACHE, WebServer.CADDY, WebServer.HAPROXY)


def parse_web_server(text: str) -> WebServer:
    """Our name or Debian's package name (``apache2``) of a server."""
    key = text.strip().lower()
    for server, package in _PACKAGE_NAMES.items():
        if key == package:
            return server
    try:
        return WebServer(key)
    except ValueError:
        raise SelectionError(f"web server {text!r} is not known; accepted: {WEB_SERVER_CHOICES}") from None


#: The user each server runs as in Debian's package: the one put in the socket group.
RUNS_AS = {WebServer.NGINX: "www-data", WebServer.APACHE: "www-data", WebServer.CADDY: "caddy",
           WebServer.HAPROXY: "haproxy"}


def web_user_for(server: WebServer, user: str) -> str:
    """The web server user for ``server``: the answer, unless it is another server's own
    user (www-data, the default, with Caddy in front): then ``server``'s, which is the one
    that must reach the sockets.  Any other name is the admin's and kept."""
    if server in RUNS_AS and user in RUNS_AS.values():
        return RUNS_AS[server]
    return user


def debconf_value(server: WebServer) -> str:
    """``server`` as the debconf question spells it (Debian's package name)."""
    return _PACKAGE_NAMES.get(server, server.value)


def detect(installed: AbstractSet[str], serving: AbstractSet[str]) -> WebServer:
    """The server to render for: the one installed, else the installed one that
    listens on 80 or 443, else the first installed (nginx first: the first of this
    package's Recommends), else nginx.

    ``installed`` and ``serving`` hold :class:`WebServer` values.
    """
    ours = [s for s in _ORDER if s.value in installed]
    if len(ours) == 1:
        return ours[0]
    listening = [s for s in ours if s.value in serving]
    return (listening or ours or [DEFAULT])[0]


#: Each server's own check, as an admin runs it.
CHECK_TOOL = {WebServer.NGINX: "nginx -t", WebServer.APACHE: "apache2ctl -t",
              WebServer.CADDY: "caddy validate --config /etc/caddy/Caddyfile",
              WebServer.HAPROXY: "haproxy -c -f /etc/haproxy/haproxy.cfg -f FILE"}
#: How the admin's configuration takes our file in (FILE: its path).
INCLUDE_ADVICE = {
    WebServer.APACHE: "run 'a2enmod proxy_http proxy_balancer lbmethod_bybusyness headers rewrite', "
                      "add 'Include FILE' inside the <VirtualHost> that serves Matrix, in place of "
                      "your ProxyPass lines, then apache2ctl -t && systemctl reload apache2",
    WebServer.CADDY: "add 'import FILE' inside the Caddyfile's site block that serves Matrix, in "
                     "place of your reverse_proxy, then systemctl restart caddy (a reload keeps the "
                     "groups Caddy started with, without the socket group)",
    WebServer.HAPROXY: "in the global section of /etc/haproxy/haproxy.cfg remove 'chroot /var/lib/haproxy' "
                       "and set 'group GROUP' (the socket group: HAProxy keeps no other "
                       "group, and the Synapse sockets are outside the chroot), add '-f FILE' to EXTRAOPTS in /etc/default/haproxy and 'use_backend "
                       "msw_entry if { path_beg /_matrix/ /_synapse/client/ }' to your frontend, "
                       "then systemctl restart haproxy (a reload keeps the old EXTRAOPTS)",
}


def include_advice(server: WebServer, file: str, socket_group: str) -> str:
    """What the admin adds for ``server`` to use our ``file`` (status and the install say it)."""
    return INCLUDE_ADVICE[server].replace("FILE", file).replace("GROUP", socket_group)
