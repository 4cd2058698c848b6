# /etc/hwsched/share_config.py: settings of `hwsched share` on a developer machine.
c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

c.ShareAgentApp.scheduler_url = "https://scheduler.example.internal:8765"
c.ShareAgentApp.ca_file = "/etc/hwsched/tls/ca.pem"
# this machine's certificate (hwsched pki issue --role machine dev-21): with it the agent
# vouches for this machine's users, as the OS tells it who asks; the key stays root's
c.ShareAgentApp.machine_cert = "/etc/hwsched/tls/dev-21.pem"
c.ShareAgentApp.machine_key = "/etc/hwsched/tls/dev-21-key.pem"
c.ShareAgentApp.listen_ip = "10.0.0.21"  # this machine's address on the nodes' network
c.ShareAgentApp.state_dir = "/var/lib/hwsched/share"
