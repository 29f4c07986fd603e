"""Turn a Debian-installed Synapse into a multi-process worker deployment.

Its floors, each a folder:

- ``core/``: pure decisions from data: the table of worker types and routes
  (:mod:`core.catalog`), the admin's choices (:mod:`core.selection`,
  :mod:`core.settings`), the plan (:mod:`core.plan`, :mod:`core.cluster` for
  worker hosts) and what changes between two plans (:mod:`core.changes`);
- ``render/``: pure, a plan into files (YAML, nginx, Redis, log and sandbox
  drop-ins);
- ``system/``: the edge that reads and touches the host (files, accounts,
  systemd, nginx, Redis and HTTP probes, Synapse's version);
- ``debconf/`` (the maintainer scripts' questions and answers), ``status/``
  (probes into rows) and :mod:`apply` (does a plan), with :mod:`cli` on top.

tests/unit/test_layers.py keeps ``core`` and ``render`` from importing the edge.
"""

__version__ = "0.3.0"
