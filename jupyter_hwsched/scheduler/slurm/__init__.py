"""Placement by Slurm: each session is a Slurm job that holds its allocation for the session's
life (``c.Scheduler.backend = "slurm"``).

- ``commands``: Slurm's own commands (sbatch, squeue, scontrol, sinfo, scancel, sacct), run
  with the deployment's ``SLURM_CONF``, and their output read into records.
- ``backend``: a request as sbatch options, Slurm's view of the jobs and nodes as the
  scheduler's words, and the settings that Slurm replaces.
- ``local``: a private one-machine Slurm (munged, slurmctld, slurmd, optionally slurmdbd over
  a private MariaDB) for ``hwsched up --placement slurm`` and the tests.
"""
