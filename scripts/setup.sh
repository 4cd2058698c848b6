#!/usr/bin/env bash
# Set up everything jupyter-hwsched needs on a fresh Debian 12 machine (run as root):
# Debian packages (Docker Engine, bubblewrap, Slurm with MUNGE and accounting over MariaDB, sshfs,
# OpenSSH server, Chromium), a virtual environment
# with the package and its test dependencies, and a non-root developer account for tests.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HWSCHED_VENV:-/opt/jupyter-hwsched/venv}"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages and mounts with FUSE)" >&2
    exit 1
fi

need=()
for pkg in docker.io sshfs openssh-server openssh-sftp-server fuse3 bubblewrap slurmctld slurmd slurm-client slurmdbd munge mariadb-server mariadb-client python3-venv python3-dev procps psmisc iproute2 chromium fonts-dejavu-core; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# Node.js and npm build the JupyterLab extension (any Node >= 18; Debian's when none is there)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
if [ "${#need[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Debian's python, so that the venv is readable by the non-root developer account too
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -U pip
fi
"$VENV/bin/pip" install -q "$HERE[test,lab]"
# the Remote GPU kernelspec with this venv's interpreter by absolute path: front ends such as
# VS Code run a kernelspec's argv with their own PATH
"$VENV/bin/hwsched" kernelspec install >/dev/null
chmod -R a+rX "$VENV"

# a developer account that is not root, for tests of uid handling. '*' = no password but
# not locked: sshd refuses locked ('!') accounts even for key logins.
if ! id hwdev >/dev/null 2>&1; then
    useradd -m -u 4321 -s /bin/bash -p '*' hwdev
fi
echo "setup.sh: ready ($VENV)"
