#!/bin/bash
# caretaker sandbox: the boot of one host. Runs as PID 1 of a fresh PID, mount and
# UTS namespace, inside the host's network namespace. Everything mounted here lives
# in this mount namespace only, so it disappears with the host.
set -eu
HOSTDIR=$1; NAME=$2; LOWER=$3; REPO=$4
ROOT=$HOSTDIR/root
mkdir -p "$ROOT"
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$HOSTDIR/upper,workdir=$HOSTDIR/work" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount --rbind /dev "$ROOT/dev"
mount -t tmpfs -o mode=755 tmpfs "$ROOT/run"
mkdir -p "$ROOT/run/sshd" "$ROOT/run/lock"
mount -t tmpfs -o mode=1777 tmpfs "$ROOT/tmp"
mount --bind -o ro "$REPO" "$ROOT/srv/caretaker-repo"
# A boot of its own: a fresh boot id each time the host starts.
cat /proc/sys/kernel/random/uuid > "$HOSTDIR/boot_id"
mount --bind -o ro "$HOSTDIR/boot_id" "$ROOT/proc/sys/kernel/random/boot_id"
hostname "$NAME"
# The sandbox's freshclam: its own signatures (sandbox/signatures.py) count as updated at
# each boot, so a malware scan never reads them as stale on a long-lived cached image.
touch "$ROOT"/var/lib/clamav/caretaker.* 2>/dev/null || true
# sshd -r: no re-exec of sshd for each connection (sshd.c: rexec_flag = 0). A sandbox host
# stands in for a server whose sshd runs on its own CPUs; a thousand of them share this
# machine's cores with caretaker, and the re-exec (a fresh sshd loading its libraries,
# config and host key) was a third of a health check's cost on the host side: see
# docs/health-check.md, Performance.
exec chroot "$ROOT" /bin/bash -c '
  /usr/sbin/sshd -D -e -r 2>>/var/log/sshd.log &
  trap "exit 0" TERM
  # PID 1 reaps every orphan: bash collects any exited child on SIGCHLD. It waits on
  # a long sleep rather than starting `sleep 1` every second: a thousand hosts spent
  # half a core on those; and a TERM (a reboot) ends the wait at once.
  while :; do sleep 3600 & wait $!; done
'
