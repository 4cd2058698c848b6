"""The developer machine's wing: ``%%hwrun``, ``hwrun``, the "Remote GPU (shared env)"
kernel, the Jupyter server extension, and the share agent that exports this machine's root."""
