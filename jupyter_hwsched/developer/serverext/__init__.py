"""The jupyter_server extension on the developer's side: what JupyterLab's GPU features talk
to (the pool, the user's sessions, "Run on GPU" runs, remote kernels' start phases), and
re-attaching remote kernels after a server restart."""
