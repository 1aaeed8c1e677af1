#!/usr/bin/env bash
# Install and start (idempotently) everything Yumen's test suite needs, and print the
# PostgreSQL DSN for the tests as the last line of standard output.
#
#   scripts/setup_infra.sh                  # `make infra`; `make test` runs it first
#   export YUMEN_TEST_POSTGRES_DSN="$(scripts/setup_infra.sh | tail -n1)"
#
# On a fresh Debian 12 machine, as root:
#   1. system packages: bubblewrap, debootstrap, libseccomp2 (apt-get, only when missing);
#   2. the Docker engine with the gVisor runtime runsc (scripts/setup_docker.sh);
#   3. the sandbox runtime: the root filesystem for bubblewrap and its Docker image
#      (`yumen sandbox build-runtime --docker`; about a minute the first time);
#   4. a local PostgreSQL server and database (scripts/setup_postgres.sh).
# Each step checks first and does nothing when its part is already there, so a second run
# takes a few seconds. Everything but the DSN goes to standard error.
#
# Without root nothing can be installed or started: the script says what is missing and the
# tests that need it skip, saying why. Under CI (CI set) every step must succeed.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
YUMEN=${YUMEN_BIN:-.venv/bin/yumen}

ci=0
case "${CI:-}" in ""|0|false|no) ;; *) ci=1 ;; esac

say() { echo "infra: $*" >&2; }
trouble() {
    # A missing part: fatal under CI (which must provide everything), a warning otherwise.
    if [ "$ci" = 1 ]; then say "FAILED: $*"; exit 1; fi
    say "WARNING: $* (the tests that need it will skip)"
}

root=0
[ "$(id -u)" = 0 ] && root=1

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ -e /usr/lib/x86_64-linux-gnu/libseccomp.so.2 ] || [ -e /usr/lib/aarch64-linux-gnu/libseccomp.so.2 ] \
    || ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || missing+=(libseccomp2)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$root" = 1 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]}"
        apt-get update -qq >&2
        apt-get install -y -qq "${missing[@]}" >&2
    else
        trouble "missing ${missing[*]}; as root: apt-get install ${missing[*]}"
    fi
fi

if docker info >/dev/null 2>&1 && docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; then
    say "docker engine with runsc: up"
elif [ "$root" = 1 ]; then
    say "docker engine with runsc: setting up"
    bash scripts/setup_docker.sh >&2 || trouble "the Docker engine did not start (scripts/setup_docker.sh)"
else
    trouble "no Docker engine with the runsc runtime; as root: bash scripts/setup_docker.sh"
fi

if [ ! -x "$YUMEN" ]; then
    trouble "$YUMEN is missing; run make venv"
elif [ "$root" = 1 ] || [ -w /var/lib/yumen ]; then
    docker_flag=()
    docker info >/dev/null 2>&1 && docker_flag=(--docker)
    "$YUMEN" sandbox build-runtime "${docker_flag[@]}" >/dev/null \
        || trouble "the sandbox runtime could not be built (yumen sandbox build-runtime)"
    say "sandbox runtime: ready"
else
    say "not root: the sandbox runtime is used as it is (build it as root: yumen sandbox build-runtime --docker)"
fi

dsn="${YUMEN_TEST_POSTGRES_DSN:-}"
if [ -z "$dsn" ]; then
    if out="$(bash scripts/setup_postgres.sh)"; then
        dsn="${out##*$'\n'}"
        say "postgresql: up"
    else
        trouble "no PostgreSQL server (scripts/setup_postgres.sh)"
    fi
fi
echo "$dsn"
