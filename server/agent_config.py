# /etc/hwsched/agent_config.py: settings of `hwsched agent` on a GPU node.
c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

c.ServerApp.ip = "0.0.0.0"
c.ServerApp.port = 8766
c.AgentApp.scheduler_url = "http://scheduler.example.internal:8765"
c.AgentApp.public_url = "http://gpu-node-1.example.internal:8766"
c.AgentApp.labels = ["nvlink", "rack-3"]
c.AgentApp.state_dir = "/var/lib/hwsched/agent"
# c.DockerRunner.docker_host = "unix:///var/run/docker.sock"
