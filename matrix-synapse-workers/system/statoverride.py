"""dpkg-statoverride for the socket directory: an admin's own override wins."""

from __future__ import annotations

from dataclasses import dataclass

from .run import run


@dataclass(frozen=True)
class Override:
    owner: str
    group: str
    mode: int


def get(path: str) -> Override | None:
    result = run(["dpkg-statoverride", "--list", path], check=False, capture=True)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    owner, group, mode, _ = result.stdout.split(maxsplit=3)
    return Override(owner, group, int(mode, 8))


def add(path: str, wanted: Override) -> None:
    run(["dpkg-statoverride", "--quiet", "--add", wanted.owner, wanted.group,
         f"{wanted.mode:o}", path])


def remove(path: str) -> None:
    run(["dpkg-statoverride", "--quiet", "--remove", path], check=False)
