"""Turn what an admin asked for (a preset, ``role:count`` lists) into a Selection.

This is the single place that validates worker choices, whatever they come
from: the command line, debconf answers or a preseed file.

>>> parse_workers("sync:4,federation_sender:2,events:2,background")
{'sync': 4, 'federation_sender': 2, 'events': 2, 'background': 1}
>>> select(preset="minimal", workers="client:2").counts
{'sync': 1, 'client': 2}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from .catalog import PRESETS, ROLES, resolve_role
from .errors import SelectionError
from .sizing import MAX_COUNT, sized_counts

_COUNT = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Selection:
    """How many workers of each role, in catalog order, counts >= 1."""

    counts: Mapping[str, int]

    def __post_init__(self) -> None:
        for role, count in self.counts.items():
            if role not in ROLES:
                raise SelectionError(f"unknown worker type {role!r}; accepted: {accepted_roles()}")
            _check_count(role, count)


def accepted_roles() -> str:
    return ", ".join(ROLES)


#: The preset sized from this machine's cores and memory (sizing.py).
AUTO = "auto"


def accepted_presets() -> str:
    return ", ".join((AUTO, *PRESETS))


def _check_count(role: str, count: int) -> None:
    if count < 1:
        raise SelectionError(
            f"count {count} for {role!r} is not allowed; a count is a whole number >= 1 "
            "(leave a type out to have none of it)")
    if count > MAX_COUNT:
        raise SelectionError(
            f"count for {role!r} is above {MAX_COUNT}, the most of one type a host can run "
            f"(each type has {MAX_COUNT + 1} metrics ports); use fewer")
    if count > 1 and not ROLES[role].scales:
        raise SelectionError(
            f"{role!r} can run only once (Synapse allows a single instance), but {count} were "
            f"asked for; types that scale: {', '.join(r.name for r in ROLES.values() if r.scales)}")


def parse_workers(spec: str) -> dict[str, int]:
    """Parse ``"sync:4,events:2,background"``; a role without a count means one.

    Whitespace around items is ignored; an empty spec means no explicit workers.
    """
    counts: dict[str, int] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, count_text = item.partition(":")
        try:
            role = resolve_role(name).name
        except KeyError:
            raise SelectionError(
                f"unknown worker type {name.strip()!r} in {spec!r}; accepted: {accepted_roles()}"
            ) from None
        if role in counts:
            raise SelectionError(f"worker type {role!r} is given twice in {spec!r}; give it once with a count")
        if not sep:
            count = 1
        elif _COUNT.fullmatch(count_text.strip()):
            # int() refuses more than 4300 digits: a long count is too large whatever it says.
            digits = count_text.strip().lstrip("0") or "0"
            count = int(digits) if len(digits) <= len(str(MAX_COUNT)) else MAX_COUNT + 1
        else:
            raise SelectionError(
                f"count {count_text!r} for {role!r} is not a number; write {role}:N with "
                f"N from 1 to {MAX_COUNT}")
        _check_count(role, count)
        counts[role] = count
    return counts


#: (cores, MiB of RAM) of the machine the preset ``auto`` sizes for.
Machine = tuple[int, int]


def preset_counts(name: str, machine: Machine | None = None) -> dict[str, int]:
    key = name.strip().lower().replace("-", "_")
    if key == AUTO:
        if machine is None:
            raise SelectionError("the preset 'auto' is sized from the machine, but its cores and "
                                 "memory were not given")
        return sized_counts(*machine)
    if key not in PRESETS:
        raise SelectionError(f"unknown preset {name!r}; accepted: {accepted_presets()}")
    return dict(PRESETS[key].counts)


def select(preset: str | None = None, workers: str | None = None,
           machine: Machine | None = None) -> Selection:
    """Combine a preset with explicit counts; explicit counts win per role.

    ``machine`` (cores, MiB) sizes the preset ``auto``; the caller reads it
    (system/machine.py), so choosing stays pure.
    """
    counts = preset_counts(preset, machine) if preset else {}
    counts.update(parse_workers(workers or ""))
    if not counts:
        raise SelectionError(
            f"no workers chosen; give a preset ({accepted_presets()}) or worker types "
            f"such as 'sync:2,client' (accepted: {accepted_roles()})")
    ordered = {name: counts[name] for name in ROLES if name in counts}
    return Selection(ordered)
