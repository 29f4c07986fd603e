"""Make the source tree importable as ``matrix_synapse_workers`` (see support/tree.py).

scripts/bench imports this file for the same reason.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.tree import use_source_tree  # noqa: E402

use_source_tree()
