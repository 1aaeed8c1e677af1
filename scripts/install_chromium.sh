#!/usr/bin/env bash
# Install Debian's headless Chromium for the disclosure page's browser tests (idempotent).
# Prints the browser's path on its last line. Needs root (apt-get) the first time only.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi
command -v chromium
