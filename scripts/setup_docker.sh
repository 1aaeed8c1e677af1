#!/bin/sh
# Prepare a Docker engine with the gVisor runtime for the docker and gvisor sandbox backends.
#
# Idempotent: installs docker.io and runsc if missing, registers runsc (with its own network
# stack disabled) in /etc/docker/daemon.json, starts dockerd in the background when no
# engine answers, and waits until `docker info` does. No image is pulled: the sandbox image
# is imported from the runtime rootfs by `yumen sandbox build-runtime --docker`.
set -eu

LOG=${YUMEN_DOCKERD_LOG:-/var/log/yumen-dockerd.log}
RUNSC=$(command -v runsc || true)

if ! command -v dockerd >/dev/null 2>&1 || [ -z "$RUNSC" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q docker.io runsc
    RUNSC=$(command -v runsc)
fi

mkdir -p /etc/docker
CONFIG=/etc/docker/daemon.json
WANT=$(cat <<JSON
{
  "runtimes": {
    "runsc": {"path": "$RUNSC", "runtimeArgs": ["--network=none"]}
  },
  "log-driver": "json-file",
  "log-opts": {"max-size": "1m", "max-file": "1"}
}
JSON
)
if [ ! -f "$CONFIG" ] || [ "$(cat "$CONFIG")" != "$WANT" ]; then
    if [ -f "$CONFIG" ]; then cp "$CONFIG" "$CONFIG.bak"; fi
    printf '%s\n' "$WANT" > "$CONFIG"
    RESTART=1
else
    RESTART=0
fi

if docker info >/dev/null 2>&1; then
    if [ "$RESTART" = 1 ] && [ -f /var/run/docker.pid ]; then
        echo "daemon.json changed; restarting dockerd"
        kill "$(cat /var/run/docker.pid)" || true
        for _ in $(seq 1 50); do docker info >/dev/null 2>&1 || break; sleep 0.2; done
    else
        echo "docker engine already running"
        exit 0
    fi
fi

nohup dockerd >"$LOG" 2>&1 &
for _ in $(seq 1 150); do
    if docker info >/dev/null 2>&1; then
        docker info --format 'docker {{.ServerVersion}} runtimes: {{range $k, $v := .Runtimes}}{{$k}} {{end}}'
        exit 0
    fi
    sleep 0.2
done
echo "dockerd did not start; see $LOG" >&2
tail -n 20 "$LOG" >&2
exit 1
