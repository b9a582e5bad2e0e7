"""fedmine: federated gradient-boosted trees across organisations that keep their rows."""

__version__ = "0.1.0"
