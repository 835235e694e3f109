#!/usr/bin/env bash
# Installs what the project needs from Debian when it is missing: Java (the local Kafka
# broker), Maven (fetches the Kafka jars), PostgreSQL (the sink's integration tests),
# Chromium (the gateway's live page, tested in a real headless browser by playwright),
# espeak-ng (synthetic speech for the voice-assistant's integration test), docker-compose
# (its `config` validates docker-compose.yml and the secured variant; no engine needed).
# Needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn  >/dev/null 2>&1 || need+=(maven)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "system-deps: installing ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
