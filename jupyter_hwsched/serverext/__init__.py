"""The jupyter_server extension on the developer's side: remote kernels' progress for
JupyterLab, and re-attaching remote kernels after a server restart."""
