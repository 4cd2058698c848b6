"""Command-line entry points: ``hwsched`` (services, status, up) and ``hwrun``."""
