"""Build shim: the metadata lives in setup.cfg.

Debian bookworm's pybuild drives setuptools through setup.py, so this file
has to exist even though it adds nothing.
"""

from setuptools import setup

setup()
