# /etc/hwsched/share_config.py: settings of `hwsched share` on a developer machine.
c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

c.ShareAgentApp.scheduler_url = "http://scheduler.example.internal:8765"
c.ShareAgentApp.listen_ip = "10.0.0.21"  # this machine's address on the nodes' network
c.ShareAgentApp.state_dir = "/var/lib/hwsched/share"
