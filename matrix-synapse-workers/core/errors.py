"""The package's errors: one base class, a subclass per kind of bad input.

Every message names the bad value and what would be accepted, because it is
shown to an admin as a single ``Error: ...`` line (or a debconf note).
"""


class WorkersError(Exception):
    """Base of every error this package reports to an admin."""


class SelectionError(WorkersError):
    """The requested workers (preset, types, counts, names) are not valid."""


class HostConfigError(WorkersError):
    """Synapse's configuration on this host cannot take workers as it is."""


class ApplyError(WorkersError):
    """Applying a plan to the system failed; nothing further was changed."""
