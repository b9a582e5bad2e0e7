"""fedmine: federated gradient-boosted trees across organisations that keep their rows.

The repository keeps the orchestration skin and the data sources at its top
level (``flows/``, ``tasks/``, ``connectors/``); they ship inside this
distribution as :mod:`fedmine.flows`, :mod:`fedmine.tasks` and
:mod:`fedmine.connectors`, so an install claims no generic top-level names. An
installed wheel holds them under ``fedmine/`` (pyproject's ``package-dir``); in a
source checkout :class:`_CheckoutFolders` finds them beside this package.
"""

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path as _Path

__version__ = "0.1.0"

#: Top-level folders of the repository that are subpackages of fedmine.
SKIN_FOLDERS = ("flows", "tasks", "connectors")


class _CheckoutFolders(importlib.abc.MetaPathFinder):
    """Finds ``fedmine.flows``, ``fedmine.tasks`` and ``fedmine.connectors`` in a source checkout."""

    def __init__(self, root: _Path) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or name not in SKIN_FOLDERS:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [str(self.root)])


_here = _Path(__file__).resolve().parent
_checkout = not (_here / "flows").is_dir() and (_here.parent / "flows" / "__init__.py").is_file()
if _checkout and not any(isinstance(f, _CheckoutFolders) for f in sys.meta_path):
    sys.meta_path.append(_CheckoutFolders(_here.parent))
