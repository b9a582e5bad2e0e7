"""The canonical schema and each organisation's mapping onto it."""

from fedmine.schema.harmonise import HarmonisedFrame, harmonise, harmonise_features, merge_reports

__all__ = ["HarmonisedFrame", "harmonise", "harmonise_features", "merge_reports"]
