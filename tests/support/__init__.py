"""Helpers shared by the test suite: real services started for the duration of a session."""
