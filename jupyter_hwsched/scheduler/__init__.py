"""The scheduler: queue, placement, leases and the pool's state, served over HTTP."""
