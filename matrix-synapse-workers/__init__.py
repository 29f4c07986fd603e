"""Turn a Debian-installed Synapse into a multi-process worker deployment.

The package is split into a pure core that decides what should exist
(:mod:`catalog`, :mod:`selection`, :mod:`plan`, :mod:`render`, :mod:`changes`)
and an edge that touches the system (:mod:`system`, :mod:`apply`).
"""

__version__ = "0.2.0"
