#!/usr/bin/env bash
# Installs the system tools nearcast's tests and benchmarks talk to, with apt-get, when they are
# missing and we run as root. Otherwise prints exactly what to install and exits non-zero.
set -euo pipefail

# command -> Debian package
declare -A PKG=(
  [mosquitto]=mosquitto
  [ffmpeg]=ffmpeg
  [ffprobe]=ffmpeg
  [nginx]=nginx
  [wrk]=wrk
  [chromium-headless-shell]=chromium-headless-shell
  [npm]=npm
  [faketime]=faketime
)

missing=()
for cmd in "${!PKG[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${PKG[$cmd]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2046
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
  # Debian starts nginx on install; the benchmarks run their own on a free port.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
  pkill -x nginx 2>/dev/null || true
else
  echo "setup: missing system packages; install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
