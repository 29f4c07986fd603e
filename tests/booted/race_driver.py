"""Runs INSIDE a booted container, beside differential_driver.py (standard library only).

The profile-change race of issue 23: a user renames, then at once sends a
message, sets presence, syncs, leaves and joins again, at gaps from 0 to 300
ms, for many rounds.  From Synapse 1.150 the rename schedules a task on the
process that runs background tasks, which writes the user's new join in every
room; a leave built meanwhile on another process may cite both joins and be
refused (403 "duplicate auth_events").  Every request of every round must answer
200; the failures are printed as JSON with the step, the gap and the answer.

``profile`` and ``member`` name where renames and membership changes go: nginx
(the package's routes) or one process's socket (a route the package does not
take, to show the race it avoids).

    python3 race_driver.py '{"proxy": "http://127.0.0.1:8080", "main": "/run/.../main.sock",
                             "member": "http://127.0.0.1:8080", "rounds": 100, ...}'
"""

from __future__ import annotations

import json
import sys
import time

from differential_driver import CS, Target, World, q

#: Gaps between the steps of one round, in milliseconds, cycled over the rounds.
GAPS = (0, 10, 30, 60, 90, 150, 300)


def round_trip(w: World, member: Target, who: dict, room: str, n: int, gap: float) -> list[dict]:
    """One round; returns its failed steps."""
    failed = []

    def step(name: str, target: Target, method: str, path: str, body=None) -> None:
        answer = target.request(method, path, body, who["token"])
        if answer.status != 200:
            failed.append({"round": n, "gap_ms": int(gap * 1000), "step": name,
                           "status": answer.status, "body": answer.body[:300].decode(errors="replace")})
        time.sleep(gap)

    uid = q(who["id"])
    step("rename", w.proxy, "PUT", f"{CS}/v3/profile/{uid}/displayname", {"displayname": f"racer {n}"})
    step("message", w.proxy, "PUT", f"{CS}/v3/rooms/{q(room)}/send/m.room.message/r{n}",
         {"msgtype": "m.text", "body": f"round {n}"})
    step("presence", w.proxy, "PUT", f"{CS}/v3/presence/{uid}/status", {"presence": "online"})
    step("sync", w.proxy, "GET", f"{CS}/v3/sync?timeout=0&filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1%7D%7D%7D")
    step("leave", member, "POST", f"{CS}/v3/rooms/{q(room)}/leave", {})
    step("join", member, "POST", f"{CS}/v3/rooms/{q(room)}/join", {})
    return failed


def main() -> None:
    args = json.loads(sys.argv[1])
    w = World(args)
    member = Target(args.get("member") or args["proxy"])
    owner, racer = w.user(), w.user()
    room = w.room(owner)
    w.join(racer, room)
    # More rooms make the profile task longer (one new join per room).
    for _ in range(int(args.get("rooms", 3)) - 1):
        w.join(racer, w.room(owner))
    rounds = int(args.get("rounds", 100))
    failures: list[dict] = []
    started = time.monotonic()
    for n in range(rounds):
        failures += round_trip(w, member, racer, room, n, GAPS[n % len(GAPS)] / 1000)
        if failures and failures[-1]["step"] == "join":
            w.join(racer, room)  # stuck out of the room: back in through main, go on
    json.dump({"version": w.version, "rounds": rounds, "requests": rounds * 6,
               "seconds": round(time.monotonic() - started, 1), "failures": failures}, sys.stdout)


if __name__ == "__main__":
    main()
