# /etc/hwsched/agent_config.py: settings of `hwsched agent` on a GPU node.
c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

c.ServerApp.ip = "0.0.0.0"
c.ServerApp.port = 8766
# the node's certificate (hwsched pki issue --role node gpu-node-1 --address ...): it serves
# HTTPS with it and signs its calls to the scheduler, so that it can act only as itself
c.ServerApp.certfile = "/etc/hwsched/tls/gpu-node-1.pem"
c.ServerApp.keyfile = "/etc/hwsched/tls/gpu-node-1-key.pem"
c.AgentApp.ca_file = "/etc/hwsched/tls/ca.pem"
c.AgentApp.node_name = "gpu-node-1"  # the name in its certificate
c.AgentApp.scheduler_url = "https://scheduler.example.internal:8765"
c.AgentApp.public_url = "https://gpu-node-1.example.internal:8766"
c.AgentApp.labels = ["nvlink", "rack-3"]
c.AgentApp.state_dir = "/var/lib/hwsched/agent"
# c.DockerRunner.docker_host = "unix:///var/run/docker.sock"

# what one session may use of this node; users ask within the bounds with --mem and --cpus
c.SessionLimits.memory = "16G"  # swap included; the session's /tmp counts too
c.SessionLimits.max_memory = "400G"
c.SessionLimits.cpus = 8.0
c.SessionLimits.max_cpus = 64.0
c.SessionLimits.pids = 4096
c.SessionLimits.tmp = "8G"
# no network for the work (the default); name a Docker network made for egress to allow it
# c.DockerRunner.network_mode = "hwsched-egress"
c.AgentApp.kernel_start_timeout = 300.0
