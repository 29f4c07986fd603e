#!/usr/bin/python3
"""A small stand-in for the Matrix Authentication Service, where Synapse and clients meet it.

Only what a homeserver with ``matrix_authentication_service`` and a password
client touch (README.md beside this file lists every difference from MAS):

- ``POST /oauth2/introspect``: the OAuth 2.0 token introspection Synapse calls
  (form ``token`` and ``token_type_hint``, authenticated by the shared secret as a
  bearer token), answering as MAS does for compatibility access tokens;
- the compatibility layer MAS serves for Matrix clients: ``GET`` and ``POST
  /_matrix/client/{version}/login`` (password login), ``POST .../logout``;
- ``/.well-known/openid-configuration`` (Synapse fetches it for auth_metadata);
- ``POST /_test/register``: what ``mas-cli manage register-user`` does, a user
  with a password, provisioned in Synapse through ``/_synapse/mas/provision_user``.

Devices are created in Synapse (``/_synapse/mas/upsert_device``) before a login
answers, as MAS does, so the token works at once.  Every request is appended
to a log file (one JSON line each) so a test can prove what reached it.

Usage: mas_standin.py --listen 127.0.0.1:8090 --homeserver http://127.0.0.1:8080/
       --server-name test.local --secret-file /etc/mas-standin/secret --log /var/log/mas.jsonl
Standard library only: it runs on Debian's python3.
"""

from __future__ import annotations

import argparse
import binascii
import json
import secrets
import string
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALNUM = string.digits + string.ascii_uppercase + string.ascii_lowercase
API_SCOPES = "urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:api:*"
LOGIN_FLOWS = {"flows": [{"type": "m.login.password"}, {"type": "m.login.token"}]}


def base62(number: int) -> str:
    digits = ""
    while number:
        digits += ALNUM[number % 62]
        number //= 62
    return digits.rjust(6, "0")


def compat_token(prefix: str = "mct") -> str:
    """``mct_<30 alphanumerics>_<base62 CRC-32 of the rest>``, MAS's token shape."""
    base = f"{prefix}_" + "".join(secrets.choice(string.ascii_letters + string.digits)
                                  for _ in range(30))
    return f"{base}_{base62(binascii.crc32(base.encode()))}"


class State:
    def __init__(self, homeserver: str, server_name: str, secret: str, log: str) -> None:
        self.homeserver = homeserver.rstrip("/") + "/"
        self.server_name = server_name
        self.secret = secret
        self.log_path = log
        self.lock = threading.Lock()
        #: username -> {"password", "sub"}
        self.users: dict[str, dict[str, str]] = {}
        #: access token -> {"username", "device_id", "iat"}
        self.tokens: dict[str, dict[str, object]] = {}

    def log(self, entry: dict[str, object]) -> None:
        with self.lock, open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def synapse(self, path: str, body: dict[str, object]) -> None:
        """POST to Synapse's MAS API, as MAS does (bearer: the shared secret)."""
        request = urllib.request.Request(
            urllib.parse.urljoin(self.homeserver, path), data=json.dumps(body).encode(),
            method="POST", headers={"Authorization": f"Bearer {self.secret}",
                                    "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


class Handler(BaseHTTPRequestHandler):
    server_version = "mas-standin"
    state: State

    # --- plumbing -------------------------------------------------------------------
    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.state.log({"method": self.command, "path": self.path, "status": status})

    def _matrix_error(self, status: int, errcode: str, error: str) -> None:
        self._reply(status, {"errcode": errcode, "error": error})

    def _bearer(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value[7:].strip() if value[:7].lower() == "bearer " else None

    def _compat(self) -> str | None:
        """The compat endpoint named by the path (/_matrix/client/<version>/<name>)."""
        parts = urllib.parse.urlsplit(self.path).path.split("/")
        if len(parts) >= 5 and parts[1:3] == ["_matrix", "client"]:
            return "/".join(parts[4:])
        return None

    def log_message(self, *args: object) -> None:
        pass

    # --- routes ----------------------------------------------------------------------
    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if self._compat() == "login":
            return self._reply(200, LOGIN_FLOWS)
        if path == "/.well-known/openid-configuration":
            issuer = f"http://{self.headers.get('Host', 'localhost')}/"
            return self._reply(200, {"issuer": issuer,
                                     "introspection_endpoint": issuer + "oauth2/introspect",
                                     "account_management_uri": issuer + "account/"})
        if path == "/health":
            return self._reply(200, {})
        self._matrix_error(404, "M_UNRECOGNIZED", "Unrecognized request")

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        body = self._body()
        compat = self._compat()
        if path == "/oauth2/introspect":
            return self._introspect(body)
        if path == "/_test/register":
            return self._register(json.loads(body or b"{}"))
        if compat == "login":
            return self._login(body)
        if compat in ("logout", "logout/all"):
            return self._logout(compat == "logout/all")
        self._matrix_error(404, "M_UNRECOGNIZED", "Unrecognized request")

    def _introspect(self, raw: bytes) -> None:
        if self._bearer() != self.state.secret:
            return self._reply(401, {"error": "access_denied"})
        form = urllib.parse.parse_qs(raw.decode())
        token = (form.get("token") or [""])[0]
        hint = (form.get("token_type_hint") or [None])[0]
        with self.state.lock:
            session = self.state.tokens.get(token)
        if session is None or hint not in (None, "access_token"):
            return self._reply(200, {"active": False})
        scope = API_SCOPES
        if self.headers.get("X-MAS-Supports-Device-Id") != "1":
            scope += (f" urn:matrix:client:device:{session['device_id']}"
                      f" urn:matrix:org.matrix.msc2967.client:device:{session['device_id']}")
        username = str(session["username"])
        self._reply(200, {
            "active": True, "scope": scope, "client_id": "legacy", "username": username,
            "token_type": "access_token", "iat": session["iat"], "nbf": session["iat"],
            "sub": self.state.users[username]["sub"],
            **({"device_id": session["device_id"]}
               if self.headers.get("X-MAS-Supports-Device-Id") == "1" else {}),
        })

    def _register(self, data: dict[str, str]) -> None:
        username, password = data["username"], data["password"]
        with self.state.lock:
            self.state.users[username] = {"password": password,
                                          "sub": "01" + secrets.token_hex(12).upper()}
        self.state.synapse("_synapse/mas/provision_user",
                           {"localpart": username, "unset_displayname": True})
        self._reply(200, {"username": username})

    def _login(self, raw: bytes) -> None:
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            return self._matrix_error(400, "M_NOT_JSON", "Invalid JSON")
        if data.get("type") != "m.login.password":
            return self._matrix_error(400, "M_UNKNOWN", "Invalid login type")
        identifier = data.get("identifier") or {"type": "m.id.user", "user": data.get("user")}
        if identifier.get("type") != "m.id.user":
            return self._matrix_error(400, "M_UNKNOWN", "unsupported identifier type")
        user = str(identifier.get("user") or "")
        if user.startswith("@"):
            user = user[1:].split(":", 1)[0]
        with self.state.lock:
            known = self.state.users.get(user)
        if known is None or not secrets.compare_digest(known["password"], str(data.get("password"))):
            return self._matrix_error(403, "M_FORBIDDEN", "Invalid username/password")
        device = data.get("device_id") or "".join(secrets.choice(string.ascii_letters + string.digits)
                                                  for _ in range(10))
        upsert = {"localpart": user, "device_id": device}
        if data.get("initial_device_display_name"):
            upsert["display_name"] = data["initial_device_display_name"]
        self.state.synapse("_synapse/mas/upsert_device", upsert)
        token = compat_token()
        with self.state.lock:
            self.state.tokens[token] = {"username": user, "device_id": device,
                                        "iat": int(time.time())}
        self._reply(200, {"access_token": token, "device_id": device,
                          "user_id": f"@{user}:{self.state.server_name}"})

    def _logout(self, everything: bool) -> None:
        token = self._bearer()
        with self.state.lock:
            session = self.state.tokens.get(token or "")
            if session is None:
                ended = []
            elif everything:
                ended = [(t, s) for t, s in self.state.tokens.items()
                         if s["username"] == session["username"]]
            else:
                ended = [(token, session)]
            for ended_token, _ in ended:
                del self.state.tokens[ended_token]
        if session is None:
            return self._matrix_error(401, "M_UNKNOWN_TOKEN", "Invalid access token")
        for _, ended_session in ended:
            self.state.synapse("_synapse/mas/delete_device", {
                "localpart": ended_session["username"], "device_id": ended_session["device_id"]})
        self._reply(200, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8090")
    parser.add_argument("--homeserver", required=True, help="where MAS reaches Synapse")
    parser.add_argument("--server-name", required=True)
    parser.add_argument("--secret-file", required=True, help="the secret shared with Synapse")
    parser.add_argument("--log", required=True, help="one JSON line per request")
    args = parser.parse_args()
    with open(args.secret_file, encoding="utf-8") as handle:
        secret = handle.read().strip()
    Handler.state = State(args.homeserver, args.server_name, secret, args.log)
    host, port = args.listen.rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
