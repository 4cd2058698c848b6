# /etc/hwsched/scheduler_config.py: settings of `hwsched scheduler` (traitlets config).
c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

c.SchedulerApp.ip = "0.0.0.0"
c.SchedulerApp.port = 8765
c.SchedulerApp.db = "/var/lib/hwsched/scheduler.sqlite"
# TLS with the pool CA (hwsched pki issue --role scheduler scheduler.example.internal ...)
c.SchedulerApp.certfile = "/etc/hwsched/tls/scheduler.pem"
c.SchedulerApp.keyfile = "/etc/hwsched/tls/scheduler-key.pem"
# identities: users are vouched for by their machine's certificate, nodes by theirs; the
# pool token (HWSCHED_TOKEN in /etc/hwsched/env) is the operators' alone
c.SchedulerApp.ca_file = "/etc/hwsched/tls/ca.pem"
c.SchedulerApp.revoked_file = "/etc/hwsched/revoked"  # one name a line; read when it changes

c.Scheduler.lease_seconds = 60  # a client silent this long loses its session
c.Scheduler.node_timeout = 30  # a node silent this long is down
c.Scheduler.user_gpu_quota = 4  # GPUs one user may hold at once (0: no limit)
c.Scheduler.group_gpu_quotas = {"interns": 2}
c.Scheduler.fair_share_half_life = 4 * 3600
c.Scheduler.user_max_priority = 10  # the highest --priority a user may ask for
# c.Scheduler.placement_class = "jupyter_hwsched.scheduler.placement.SpreadPlacement"
