"""The bottom layer: what the machines of a pool say to each other.

Errors, the request language and its limits, typed records with their JSON form, typed
clients for every call between machines, the one error mapping of every HTTP surface, and
the protocol version. Nothing here imports anything above it (see the import-linter
contracts in ``pyproject.toml``).
"""
