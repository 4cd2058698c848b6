"""The "Remote GPU (shared env)" kernel: a kernel provisioner on the developer's side whose
kernel runs on a pooled GPU node, bridged to local ZMQ sockets."""
