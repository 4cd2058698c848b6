"""The developer's side: settings, HTTP clients, remote sessions, the cell magic and ``hwrun``."""
