#!/usr/bin/python3
"""A lean Matrix client load generator: raw HTTP/1.1 over asyncio, standard library only.

Runs inside the benchmark container (Debian's python3), against nginx on the
container's own loopback.  Two steps, so that nothing of the setup is timed:

    loadgen.py setup --users 50 --rooms 10 --out /var/tmp/bench-setup.json
    loadgen.py run --setup /var/tmp/bench-setup.json --duration 60 --out result.json

setup registers users through Synapse's shared-secret admin API, creates the
rooms, joins every user to two of them, sends a little history and does each
user's initial /sync (for its since token).  run is a closed loop: every user
keeps one keep-alive connection and sends its next request as soon as the
last one is answered, choosing by the mix; it stops at the deadline or after
--max-requests, whichever comes first.  run --rate R is an open loop instead:
R requests per second at fixed intervals, the users taking turns, each sent
at its time on an idle keep-alive connection (a new one when none is idle),
whether or not earlier ones were answered; a request's latency counts from
its scheduled time, so a generator running late cannot hide the wait.  Each user sends its own
X-Forwarded-For (the benchmark's vhost trusts it from loopback), since
Synapse rate-limits per client address.

run --trace keeps every request (class, when it was due, when it was
answered, status, the first status before the client's own retries, attempts) and the event id of every send that got 200, for the
restart measurements (bench/restarts.py); verify then checks that each of
those events reaches every member of its room through /sync:

    loadgen.py verify --setup /var/tmp/bench-setup.json --sent result.json --out verify.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import re
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stats import (CLASSES, DEFAULT_MIX, Mix, lateness_ms, open_loop_schedule, parse_mix,  # noqa: E402
                   retry_after_s, summarize)

NEXT_BATCH = re.compile(rb'"next_batch"\s*:\s*"([^"]+)"')
CS = "/_matrix/client/v3"


class HttpFailure(Exception):
    """The connection broke or the response could not be read."""


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection to host:port or a UNIX socket, reopened when closed."""

    def __init__(self, target: str, timeout: float = 60.0) -> None:
        self.target = target
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        if self.target.startswith("unix:"):
            self.reader, self.writer = await asyncio.open_unix_connection(self.target[5:])
        else:
            host, _, port = self.target.rpartition(":")
            self.reader, self.writer = await asyncio.open_connection(host, int(port))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, headers: dict[str, str],
                      body: bytes | None = None) -> Response:
        for attempt in (1, 2):
            fresh = self.writer is None
            if fresh:
                await self._open()
            try:
                return await asyncio.wait_for(self._exchange(method, path, headers, body), self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError, HttpFailure) as e:
                self.close()
                if fresh or attempt == 2:  # a reused connection may have been closed by the server
                    raise HttpFailure(f"{method} {path}: {e!r}") from e
            except asyncio.TimeoutError as e:
                self.close()
                raise HttpFailure(f"{method} {path}: timed out after {self.timeout} s") from e
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, path: str, headers: dict[str, str],
                        body: bytes | None) -> Response:
        assert self.reader is not None and self.writer is not None
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpFailure(f"bad status line {status_line!r}")
        fields = {}
        for line in header_lines:
            k, sep, v = line.partition(":")
            if sep:
                fields[k.strip().lower()] = v.strip()
        if "content-length" in fields:
            data = await self.reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            data = await self._chunked()
        else:
            data = await self.reader.read()
            self.close()
        if fields.get("connection", "").lower() == "close":
            self.close()
        return Response(int(parts[1]), data)

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        out = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return bytes(out)
            out += await self.reader.readexactly(size)
            await self.reader.readexactly(2)


def client_ip(i: int) -> str:
    return f"10.77.{i // 200}.{i % 200 + 1}"


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# --------------------------------------------------------------------------
# setup


async def call(conn: Connection, method: str, path: str, ip: str, token: str | None = None,
               body: Any = None, ok: tuple[int, ...] = (200,)) -> Response:
    """A setup request: JSON body, retried on 429 as Synapse asks; other statuses fail."""
    headers = {"X-Forwarded-For": ip}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    for _ in range(30):
        r = await conn.request(method, path, headers, data)
        if r.status == 429:
            wait = r.json().get("retry_after_ms", 500) / 1000
            await asyncio.sleep(min(wait, 5.0))
            continue
        if r.status not in ok:
            raise SystemExit(f"setup: {method} {path} -> {r.status} {r.body[:300]!r}")
        return r
    raise SystemExit(f"setup: {method} {path} still rate-limited after 30 tries")


async def register(admin: str, name: str, secret: str, ip: str) -> dict[str, Any]:
    conn = Connection(admin)
    try:
        nonce = (await call(conn, "GET", "/_synapse/admin/v1/register", ip)).json()["nonce"]
        password = f"{name}-bench-password"
        mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), name.encode(), password.encode(), b"notadmin"]))
        body = {"nonce": nonce, "username": name, "password": password, "admin": False,
                "mac": mac.hexdigest()}
        return (await call(conn, "POST", "/_synapse/admin/v1/register", ip, body=body)).json()
    finally:
        conn.close()


async def bounded(limit: int, coros: list) -> list:
    sem = asyncio.Semaphore(limit)

    async def one(c):  # type: ignore[no-untyped-def]
        async with sem:
            return await c
    return await asyncio.gather(*(one(c) for c in coros))


async def setup(args: argparse.Namespace) -> dict[str, Any]:
    tag = args.tag or format(int(time.time()), "x")
    names = [f"bench{tag}u{i}" for i in range(args.users)]
    ips = [client_ip(i) for i in range(args.users)]
    regs = await bounded(4, [register(args.admin, n, args.secret, ip) for n, ip in zip(names, ips)])
    conns = [Connection(args.target) for _ in names]
    tokens = [r["access_token"] for r in regs]
    rooms: list[str] = []
    for j in range(args.rooms):
        i = j % args.users
        r = await call(conns[i], "POST", f"{CS}/createRoom", ips[i], tokens[i],
                       {"preset": "public_chat", "name": f"bench room {j}"})
        rooms.append(r.json()["room_id"])
    member_of = [sorted({rooms[i % args.rooms], rooms[(i + 1) % args.rooms]}) for i in range(args.users)]

    async def join_and_talk(i: int) -> None:
        for room in member_of[i]:
            await call(conns[i], "POST", f"{CS}/join/{q(room)}", ips[i], tokens[i], {})
        for room in member_of[i]:
            for k in range(args.history):
                await call(conns[i], "PUT", f"{CS}/rooms/{q(room)}/send/m.room.message/setup{k}",
                           ips[i], tokens[i], {"msgtype": "m.text", "body": f"history {k} from {i}"})

    await bounded(8, [join_and_talk(i) for i in range(args.users)])

    async def initial_sync(i: int) -> str:
        r = await call(conns[i], "GET", f"{CS}/sync?timeout=0", ips[i], tokens[i])
        return r.json()["next_batch"]

    since = await bounded(8, [initial_sync(i) for i in range(args.users)])
    for c in conns:
        c.close()
    return {"target": args.target, "rooms": rooms,
            "users": [{"user_id": r["user_id"], "token": t, "ip": ip, "rooms": m, "since": s}
                      for r, t, ip, m, s in zip(regs, tokens, ips, member_of, since)]}


# --------------------------------------------------------------------------
# run


@dataclass
class Recorder:
    started: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CLASSES})
    errors: dict[str, int] = field(default_factory=lambda: {c: 0 for c in CLASSES})
    #: (seconds since start, class, status or failure text), the first few hundred.
    error_samples: list[tuple[float, str, str]] = field(default_factory=list)
    #: per whole second since start: [ok, errors]
    timeline: dict[int, list[int]] = field(default_factory=dict)
    #: With --trace: [class, due s, answered s, status] of every request (status 0: no HTTP
    #: answer, -1: shed), times since start.
    trace: list[list[Any]] | None = None
    #: With --trace: [user index, room, event id] of every send answered 200.
    sent: list[list[Any]] | None = None

    def note(self, cls: str, due: float, now: float, status: int, first: int | None = None,
             attempts: int = 1) -> None:
        """``status``: the last answer (what the client saw); ``first``: the proxy's first
        answer, before any retry of the client's own."""
        if self.trace is not None:
            self.trace.append([cls, round(due - self.started, 4), round(now - self.started, 4), status,
                               status if first is None else first, attempts])

    def ok(self, cls: str, latency: float, now: float) -> None:
        self.latencies[cls].append(latency)
        self.timeline.setdefault(int(now - self.started), [0, 0])[0] += 1

    def error(self, cls: str, what: str, now: float) -> None:
        self.errors[cls] += 1
        self.timeline.setdefault(int(now - self.started), [0, 0])[1] += 1
        if len(self.error_samples) < 300:
            self.error_samples.append((round(now - self.started, 3), cls, what))


def request_for(cls: str, user: dict[str, Any], users: list[dict[str, Any]], rng: random.Random,
                txn: str) -> tuple[str, str, bytes | None, str]:
    """(method, path, body, room) of one request; txn must be unique per user and run (Synapse
    answers a repeated transaction id with the first send's event, persisting nothing)."""
    room = rng.choice(user["rooms"])
    if cls == "sync":
        return "GET", f"{CS}/sync?timeout=0&since={q(user['since'])}", None, room
    if cls == "send":
        body = json.dumps({"msgtype": "m.text", "body": f"load {txn}"}).encode()
        return "PUT", f"{CS}/rooms/{q(room)}/send/m.room.message/b{txn}", body, room
    if cls == "messages":
        return "GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=20", None, room
    if cls == "profile":
        return "GET", f"{CS}/profile/{q(rng.choice(users)['user_id'])}", None, room
    raise ValueError(cls)


async def user_loop(i: int, user: dict[str, Any], users: list[dict[str, Any]], mix: Mix,
                    target: str, deadline: float, budget: list[int], rec: Recorder,
                    seed: int, tag: str) -> None:
    rng = random.Random(seed * 7919 + i)
    conn = Connection(target, timeout=30.0)
    headers = {"Authorization": f"Bearer {user['token']}", "X-Forwarded-For": user["ip"]}
    txn = 0
    try:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            cls = mix.choose(rng)
            txn += 1
            method, path, body, room = request_for(cls, user, users, rng, f"{tag}{txn}")
            t0 = time.monotonic()
            try:
                r = await conn.request(method, path, headers, body)
            except HttpFailure as e:
                now = time.monotonic()
                rec.error(cls, str(e)[:200], now)
                rec.note(cls, t0, now, 0)
                await asyncio.sleep(0.05)
                continue
            record(rec, cls, i, user, room, r, t0)
    finally:
        conn.close()


def record(rec: Recorder, cls: str, i: int, user: dict[str, Any], room: str, r: Response,
           since: float, first: int | None = None, attempts: int = 1) -> None:
    """One answer of user i, timed from ``since`` (sent, or scheduled in an open loop); a /sync
    answer moves the user's since token on, a send's is kept (with --trace) for verify."""
    now = time.monotonic()
    rec.note(cls, since, now, r.status, first, attempts)
    if r.status == 200:
        rec.ok(cls, now - since, now)
        if cls == "sync":
            m = NEXT_BATCH.search(r.body)
            if m:
                user["since"] = m.group(1).decode()
        elif cls == "send" and rec.sent is not None:
            rec.sent.append([i, room, r.json()["event_id"]])
    else:
        rec.error(cls, f"{r.status} {r.body[:120]!r}", now)


class Pool:
    """Idle keep-alive connections to one target, shared by every user of an open loop."""

    def __init__(self, target: str, limit: int) -> None:
        self.target = target
        self.limit = limit
        self.idle: list[Connection] = []
        self.busy = 0

    def take(self) -> Connection | None:
        """An idle connection, a new one, or None when `limit` requests are already out."""
        if self.busy >= self.limit:
            return None
        self.busy += 1
        return self.idle.pop() if self.idle else Connection(self.target, timeout=30.0)

    def give(self, conn: Connection) -> None:
        self.busy -= 1
        if conn.writer is not None:
            self.idle.append(conn)

    def close(self) -> None:
        for c in self.idle:
            c.close()


async def open_request(pool: Pool, conn: Connection, cls: str, i: int, user: dict[str, Any],
                       users: list[dict[str, Any]], rng: random.Random, txn: str,
                       scheduled: float, rec: Recorder, retry_bound_s: float = 0.0) -> None:
    """One request of the open loop; with ``retry_bound_s`` the client retries a 429 as a
    Matrix client does (same transaction id), and the trace keeps the first answer (what
    the proxy said) beside the last (what the user saw)."""
    method, path, body, room = request_for(cls, user, users, rng, txn)
    headers = {"Authorization": f"Bearer {user['token']}", "X-Forwarded-For": user["ip"]}
    first: int | None = None
    attempts = 0
    try:
        while True:
            attempts += 1
            try:
                r = await conn.request(method, path, headers, body)
            except HttpFailure as e:
                now = time.monotonic()
                rec.error(cls, str(e)[:200], now)
                rec.note(cls, scheduled, now, 0, 0 if first is None else first, attempts)
                return
            first = r.status if first is None else first
            wait = retry_after_s(r.status, r.body, time.monotonic() - scheduled, retry_bound_s)
            if wait is None:
                break
            await asyncio.sleep(wait)
    finally:
        pool.give(conn)
    record(rec, cls, i, user, room, r, scheduled, first, attempts)


async def open_loop(users: list[dict[str, Any]], mix: Mix, args: argparse.Namespace,
                    rec: Recorder) -> dict[str, Any]:
    """Send on schedule; return how late the sends were and how many found no connection."""
    schedule = open_loop_schedule(args.rate, args.duration, mix, args.seed)[: args.max_requests]
    rng = random.Random(args.seed * 7919)
    pool = Pool(args.target, args.max_outstanding)
    tasks: set[asyncio.Task] = set()
    scheduled, sent = [], []
    shed = 0
    for i, (offset, cls) in enumerate(schedule):
        at = rec.started + offset
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = pool.take()
        if conn is None:  # the server is this far behind: count it as failed, keep the schedule
            shed += 1
            now = time.monotonic()
            rec.error(cls, f"shed: {args.max_outstanding} requests outstanding", now)
            rec.note(cls, at, now, -1)
            continue
        scheduled.append(at)
        sent.append(time.monotonic())
        task = asyncio.create_task(open_request(pool, conn, cls, i % len(users), users[i % len(users)],
                                                users, rng, f"{args.txn_tag}{i}", at, rec,
                                                args.client_retry_s))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=35.0 + args.client_retry_s)
    pool.close()
    return {"rate": args.rate, "scheduled": len(schedule), "shed": shed,
            "lateness_ms": lateness_ms(scheduled, sent).__dict__}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.setup) as f:
        data = json.load(f)
    users = data["users"][: args.users or None]
    mix = parse_mix(args.mix)
    started = time.monotonic()
    deadline = started + args.duration
    budget = [args.max_requests]
    rec = Recorder(started)
    if args.trace:
        rec.trace, rec.sent = [], []
    cpu0 = os.times()
    open_info = None
    if args.rate:
        open_info = await open_loop(users, mix, args, rec)
    else:
        await asyncio.gather(*(user_loop(i, u, users, mix, args.target, deadline, budget, rec,
                                         args.seed, args.txn_tag)
                               for i, u in enumerate(users)))
    elapsed = time.monotonic() - started
    cpu1 = os.times()
    classes = {}
    for cls in CLASSES:
        s = summarize(rec.latencies[cls], rec.errors[cls])
        classes[cls] = s.__dict__
    total_ok = sum(len(v) for v in rec.latencies.values())
    return {
        "elapsed_s": elapsed, "users": len(users), "mix": args.mix,
        "requests_ok": total_ok, "errors": sum(rec.errors.values()),
        "requests_per_s": total_ok / elapsed if elapsed else 0.0,
        "classes": classes, "error_samples": rec.error_samples,
        "timeline": {str(k): v for k, v in sorted(rec.timeline.items())},
        "generator_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "open_loop": open_info,
        # CLOCK_MONOTONIC, which the host and the container share: places the trace on the
        # host's clock (when the restarts were made).
        "started_monotonic": started,
        "trace": rec.trace, "sent": rec.sent,
    }


# --------------------------------------------------------------------------
# verify: every send answered 200 reaches every member of its room


async def events_seen(conn: Connection, user: dict[str, Any], wanted: dict[str, set[str]]) -> set[str]:
    """The wanted event ids this user's /sync shows, from its setup-time since token.

    One incremental /sync with a timeline limit above what each room can
    hold; a room whose timeline still comes back limited is paged back with
    /messages from its prev_batch until every wanted event is found or the
    room's start is reached.
    """
    limit = max([len(v) for v in wanted.values()] + [0]) + 200
    filt = json.dumps({"room": {"timeline": {"limit": limit}, "state": {"lazy_load_members": True}},
                       "presence": {"not_types": ["*"]}}, separators=(",", ":"))
    r = await call(conn, "GET", f"{CS}/sync?timeout=0&since={q(user['since'])}&filter={q(filt)}",
                   user["ip"], user["token"])
    seen: set[str] = set()
    rooms = r.json().get("rooms", {}).get("join", {})
    for room, want in wanted.items():
        timeline = rooms.get(room, {}).get("timeline", {})
        seen.update(e.get("event_id", "") for e in timeline.get("events", []))
        token = timeline.get("prev_batch") if timeline.get("limited") else None
        while token and not want <= seen:
            page = (await call(conn, "GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=500"
                               f"&from={q(token)}", user["ip"], user["token"])).json()
            seen.update(e.get("event_id", "") for e in page.get("chunk", []))
            token = page.get("end") if page.get("chunk") else None
    return seen


async def verify(args: argparse.Namespace) -> dict[str, Any]:
    """Check each send answered 200 (from the --sent results) against each member's /sync,
    again every 2 s until all are seen or --timeout passes."""
    with open(args.setup) as f:
        users = json.load(f)["users"]
    by_room: dict[str, set[str]] = {}
    for path in args.sent:
        with open(path) as f:
            for _, room, event_id in json.load(f)["sent"] or []:
                by_room.setdefault(room, set()).add(event_id)
    deadline = time.monotonic() + args.timeout
    conn = Connection(args.target, timeout=60.0)
    started = time.monotonic()
    tries = 0
    try:
        while True:
            tries += 1
            missing: list[list[str]] = []
            for user in users:
                wanted = {room: by_room.get(room, set()) for room in user["rooms"]}
                seen = await events_seen(conn, user, wanted)
                missing += [[user["user_id"], room, e] for room, want in wanted.items()
                            for e in sorted(want - seen)]
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(2.0)
    finally:
        conn.close()
    return {"sends": sum(len(v) for v in by_room.values()),
            "checks": sum(len(by_room.get(room, ())) for u in users for room in u["rooms"]),
            "members": len(users), "missing": missing, "tries": tries,
            "seconds": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--users", type=int, default=50)
    s.add_argument("--rooms", type=int, default=10)
    s.add_argument("--history", type=int, default=3, help="messages each user sends per room in setup")
    s.add_argument("--target", default="127.0.0.1:8080", help="nginx: HOST:PORT or unix:PATH")
    s.add_argument("--admin", default="127.0.0.1:8008", help="where the admin register API is")
    s.add_argument("--secret", required=True, help="registration_shared_secret")
    s.add_argument("--tag", default="")
    s.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--setup", required=True)
    r.add_argument("--target", default="127.0.0.1:8080")
    r.add_argument("--users", type=int, default=0, help="use only the first N users (0: all)")
    r.add_argument("--duration", type=float, default=60.0)
    r.add_argument("--max-requests", type=int, default=200_000)
    r.add_argument("--mix", default=",".join(f"{k}:{int(v * 100)}" for k, v in DEFAULT_MIX.items()))
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--rate", type=float, default=0.0,
                   help="open loop: requests per second at fixed intervals (0: closed loop)")
    r.add_argument("--max-outstanding", type=int, default=1000,
                   help="open loop: requests in flight at most; beyond that a request fails as shed")
    r.add_argument("--trace", action="store_true",
                   help="keep every request's times and status, and the event id of every send answered 200")
    r.add_argument("--client-retry-s", type=float, default=0.0,
                   help="open loop: retry a 429 after its retry_after_ms as Matrix clients do, while "
                        "the whole wait stays within this many seconds (0: never retry)")
    r.add_argument("--txn-tag", default=os.urandom(4).hex(),
                   help="prefix of the sends' transaction ids (default: new for each run)")
    r.add_argument("--out", required=True)
    v = sub.add_parser("verify")
    v.add_argument("--setup", required=True)
    v.add_argument("--sent", action="append", required=True, help="a run --trace result (repeatable)")
    v.add_argument("--target", default="127.0.0.1:8080")
    v.add_argument("--timeout", type=float, default=60.0, help="seconds to keep looking for missing events")
    v.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.step == "run" and not 0 < args.duration <= 3600:
        p.error("--duration must be within (0, 3600] seconds")
    if args.step == "run" and not 0 <= args.rate <= 10_000:
        p.error(f"--rate must be within 0..10000 requests per second (0: closed loop), not {args.rate}")
    step = {"setup": setup, "run": run, "verify": verify}[args.step]
    result = asyncio.run(step(args))
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
