"""fedmine: federated gradient-boosted trees across organisations that keep their rows.

The repository keeps the orchestration skin and the data sources at its top
level (``flows/``, ``tasks/``, ``connectors/``); they ship inside this
distribution as :mod:`fedmine.flows`, :mod:`fedmine.tasks` and
:mod:`fedmine.connectors`, so an install claims no generic top-level names. In
the repository ``fedmine/flows`` (and the others) are symbolic links to those
folders; an installed wheel holds them as folders (pyproject's ``package-dir``).
"""

__version__ = "0.1.0"
