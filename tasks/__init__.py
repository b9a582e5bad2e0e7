"""Prefect tasks: thin, typed wrappers that call the engine.

Tasks take large in-memory objects (frames, parties, the coordinator), so none
of them caches (``cache_policy=NO_CACHE``): their inputs are never hashed or
persisted, and an organisation's rows stay in the process that prepared them.
Party-facing tasks retry.
"""
