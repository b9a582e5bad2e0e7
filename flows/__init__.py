"""Prefect flows: thin recipes that chain tasks and decide concurrency and retries."""
