"""The node's cache of developers' read-mostly trees (see node.py for how a session uses it)."""

from jupyter_hwsched.agent.cache.node import NodeCache, SessionCache

__all__ = ["NodeCache", "SessionCache"]
