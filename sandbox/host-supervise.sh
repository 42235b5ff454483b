#!/bin/bash
# caretaker sandbox: keep one host running; a reboot (init exits) boots it again.
# Files in HOSTDIR steer it: "stop" ends the loop, "no-boot" keeps the host down
# (a reboot that never returns), "boot-delay" holds seconds to wait before booting.
HOSTDIR=$1; NETNS=$2; NAME=$3; LOWER=$4; REPO=$5; INIT=$6
while [ ! -e "$HOSTDIR/stop" ]; do
  ip netns exec "$NETNS" unshare --fork --pid --mount --uts --kill-child=SIGKILL \
    --propagation private /bin/bash "$INIT" "$HOSTDIR" "$NAME" "$LOWER" "$REPO" \
    >>"$HOSTDIR/console.log" 2>&1 &
  echo $! > "$HOSTDIR/unshare.pid"
  wait $!
  echo "$(date -Is) $NAME: halted (exit $?)" >> "$HOSTDIR/console.log"
  [ -e "$HOSTDIR/stop" ] && break
  sleep "$(cat "$HOSTDIR/boot-delay" 2>/dev/null || echo 1)"
  while [ -e "$HOSTDIR/no-boot" ] && [ ! -e "$HOSTDIR/stop" ]; do sleep 1; done
done
rm -f "$HOSTDIR/unshare.pid"
