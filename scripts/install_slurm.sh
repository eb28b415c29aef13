#!/usr/bin/env bash
# Install a single-node Slurm (slurmctld, slurmd, sbatch) and munge from Debian's
# packages, for tests/cluster/test_slurm.py: the cluster job files are tested on the
# real scheduler, not on a stand-in. Needs root and apt; does nothing when sbatch is
# already on PATH. The test configures and starts the daemons itself, in a temporary
# folder, and stops them again: the packages' own services are left stopped.
set -euo pipefail

if command -v sbatch >/dev/null 2>&1 && command -v slurmctld >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm.sh: installing slurm-wlm needs root (apt-get); run it as root or install slurm-wlm and munge yourself" >&2
    exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm.sh: apt-get not found; install Slurm (slurmctld, slurmd, sbatch) and munge with this system's package manager" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d 101: the packages' post-install scripts must not start their own daemons
# (there may be no init system, and the test runs its own on a private configuration).
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    made_policy=1
fi
trap 'if [ -n "$made_policy" ]; then rm -f "$policy"; fi' EXIT
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v munged >/dev/null
