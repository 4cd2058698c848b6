# /etc/hwsched/scheduler_config.py on a Slurm cluster: `hwsched scheduler` placing sessions
# with Slurm (see README.md, "On a Slurm cluster"). Run it as root on the login node.
c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

c.SchedulerApp.ip = "0.0.0.0"
c.SchedulerApp.port = 8765
c.SchedulerApp.db = "/var/lib/hwsched/scheduler.sqlite"
c.SchedulerApp.certfile = "/etc/hwsched/tls/scheduler.pem"
c.SchedulerApp.keyfile = "/etc/hwsched/tls/scheduler-key.pem"
c.SchedulerApp.ca_file = "/etc/hwsched/tls/ca.pem"

c.Scheduler.backend = "slurm"
c.Scheduler.lease_seconds = 60
c.Scheduler.node_timeout = 30
c.Scheduler.user_max_priority = 10  # still ours: who may ask for --priority (a negative nice)
# quotas, fair share, backfill and placement are Slurm's now: set here, they are refused

c.SlurmBackend.slurm_conf = "/etc/slurm/slurm.conf"
c.SlurmBackend.partition = "gpu-interactive"
c.SlurmBackend.account = "notebooks"
c.SlurmBackend.submit_as = "owner"  # each job is its verified owner's (sbatch --uid)
c.SlurmBackend.gpu_mem_feature = "gpumem{gb}g"  # node features stating GPU memory
# c.SlurmBackend.node_names = {"gpu001": "gpu001.example.internal"}  # Slurm's -> the agent's
