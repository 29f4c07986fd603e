"""The record of what the postinst last applied (``/var/lib/matrix-synapse-workers/applied``).

``key=value`` lines: ``workers`` (the worker set, spelled as
:func:`..answers.normalized_counts` spells it), ``socket_group``, ``metrics``
(``true`` or ``false``), ``synapse`` (the Synapse package and version the workers were last started
with), ``web_user`` (the web server user put in the socket group; empty for
none: the one choice no deployed file shows), ``auto`` (the counts the
preset ``auto`` resolved to when it was last decided, kept across upgrades),
``memory_budget`` (``auto`` or MiB, as conf.d/workers.yaml says it),
``web_server`` (the server in front last applied, by the postinst or the command, as
:class:`..core.webserver.WebServer` spells it: ``none`` leaves no file to show it, and
it is what ``auto`` keeps) and ``debconf_web_server`` (the one the postinst applied:
when the command applied another since, ``debian/config`` takes that as the answer,
as it takes files changed by hand).
This module is the format's one definition.  ``debian/config`` (sh:
at preconfigure it may run before python3 is unpacked) reads the same file
with sed, the last line of a key winning as it does here;
tests/unit/test_answers.py holds that reading to :class:`AppliedRecord`.
The postinst, ``debian/config``, the answers and ``status`` use this one
spelling.

While the postinst applies, ``applying`` beside it holds the answers being
applied (``question=value`` lines): a run killed half-way (power loss, the
OOM killer, SIGKILL of dpkg) leaves it, and then the worker files on disk are
what the killed run half-wrote, not an admin's edit.  ``debian/config`` takes
the answers from it instead of reading the files back, so ``dpkg --configure
-a`` finishes what the killed run began.  It goes once the record is written.

>>> record = AppliedRecord.parse("workers=sync:2\\nsocket_group=web\\nsynapse=matrix-synapse-py3 1.163.2\\n")
>>> record.workers, record.socket_group, record.synapse
('sync:2', 'web', 'matrix-synapse-py3 1.163.2')
>>> AppliedRecord("sync:1", "clubmatrix").format()
'workers=sync:1\\nsocket_group=clubmatrix\\n'
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ..core import paths
from . import crashpoint


@dataclass(frozen=True)
class AppliedRecord:
    """What was applied; None: the key is not recorded."""

    workers: str | None = None
    socket_group: str | None = None
    synapse: str | None = None
    metrics: str | None = None
    web_user: str | None = None
    auto: str | None = None
    #: The memory budget applied (``auto`` or MiB), as conf.d/workers.yaml keeps it.
    memory_budget: str | None = None
    web_server: str | None = None
    debconf_web_server: str | None = None

    @classmethod
    def parse(cls, text: str) -> AppliedRecord:
        values: dict[str, str] = {}
        names = {f.name for f in fields(cls)}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key in names:
                values[key] = value
        return cls(**values)

    def format(self) -> str:
        return "".join(f"{f.name}={getattr(self, f.name)}\n" for f in fields(self)
                       if getattr(self, f.name) is not None)


def read(root: Path) -> AppliedRecord | None:
    """The record under ``root``; None when nothing was applied yet (or it is unreadable)."""
    try:
        return AppliedRecord.parse((root / paths.APPLIED_RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def _replace(path: Path, text: str) -> None:
    """Write beside, sync, rename, sync the directory: after a crash, the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    crashpoint.done(f"wrote {path}")
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write(root: Path, record: AppliedRecord) -> bool:
    """Replace the record atomically, only when it changes (a rerun changes no file)."""
    path = root / paths.APPLIED_RECORD
    text = record.format()
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    _replace(path, text)
    return True


def begin(root: Path, answers: Mapping[str, str]) -> None:
    """Before the first change: the answers being applied, on disk (one line each)."""
    _replace(root / paths.PENDING_ANSWERS,
             "".join(f"{q}={' '.join(v.splitlines())}\n" for q, v in answers.items()))


def pending(root: Path) -> dict[str, str] | None:
    """The answers of an apply that did not finish; None when every apply finished."""
    try:
        text = (root / paths.PENDING_ANSWERS).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


def _clear(root: Path) -> None:
    if (root / paths.PENDING_ANSWERS).exists():
        (root / paths.PENDING_ANSWERS).unlink()
        crashpoint.done("removed the pending answers")


def abandon(root: Path) -> None:
    """The apply stopped with an error of its own (not killed): nothing is pending."""
    _clear(root)


def finish(root: Path, record: AppliedRecord) -> None:
    """After the apply: the record, then the pending answers go (in that order)."""
    write(root, record)
    _clear(root)


# --- a refusal: why the host was left as it was ----------------------------------


def refuse(root: Path, why: str) -> None:
    """An install or reconfigure found a host it cannot configure: why, for ``status``."""
    _replace(root / paths.NOT_CONFIGURED, " ".join(why.split()) + "\n")


def refusal(root: Path) -> str | None:
    """Why the last install or reconfigure configured nothing; None when it did not refuse."""
    try:
        return (root / paths.NOT_CONFIGURED).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def clear_refusal(root: Path) -> None:
    """A successful apply: the host is configured."""
    if (root / paths.NOT_CONFIGURED).exists():
        (root / paths.NOT_CONFIGURED).unlink()
        crashpoint.done("removed the refusal")


# --- the service actions an apply owes -----------------------------------------


def owed_services(root: Path) -> dict[str, Any] | None:
    """What a killed apply decided to stop, start, restart or reload; None if nothing."""
    try:
        data = json.loads((root / paths.SERVICES_OWED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def owe_services(root: Path, more: Mapping[str, Any]) -> None:
    """Before the change that needs them: service actions added to what is owed (a killed
    run's too: lists are joined, a flag stays set once set)."""
    owed = owed_services(root) or {}
    merged = {key: (sorted(set(owed.get(key, [])) | set(value)) if isinstance(value, list)
                    else bool(owed.get(key)) or value) for key, value in more.items()}
    _replace(root / paths.SERVICES_OWED, json.dumps({**owed, **merged}, sort_keys=True) + "\n")


def services_paid(root: Path) -> None:
    if (root / paths.SERVICES_OWED).exists():
        (root / paths.SERVICES_OWED).unlink()
        crashpoint.done("removed the services owed")
