"""The share agent: exports the developer machine's root over SFTP, one session at a time."""
