#!/usr/bin/env bash
# Podman on a machine like the project's CI (Debian 12, root, cgroups v1, no systemd): Debian's packages,
# runc as the runtime (crun fails there: "cgroups in hybrid mode not supported"), and default ulimits
# inside the machine's own (podman's defaults exceed them, and runc then fails to start any container).
# Test scaffolding for tests/test_containers.py; not needed where podman or docker already works.
set -euo pipefail
if ! command -v podman >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null
fi
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
# runc refuses an nproc above the kernel's pid_max here.
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
[ "$nofile" = unlimited ] && nofile=1048576
mkdir -p /etc/containers
cat > /etc/containers/containers.conf <<CONF
# Written by Backdrop's harness/podman-setup.sh.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
CONF
