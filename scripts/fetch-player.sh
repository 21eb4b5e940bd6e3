#!/usr/bin/env bash
# Takes the web player (Shaka Player, Apache-2.0) from the npm registry at build time and puts its
# compiled build and licence into control/web/static/vendor/, shipped as package data.
set -euo pipefail
VERSION=5.2.12
cd "$(dirname "$0")/.."
dest=control/web/static/vendor
if [ -f "$dest/shaka-player.compiled.js" ] && grep -q "$VERSION" "$dest/VERSION" 2>/dev/null; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  else
    echo "fetch-player: npm is needed to fetch the web player: sudo apt-get install npm" >&2
    exit 1
  fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "shaka-player@$VERSION" --silent >/dev/null)
tar -xzf "$tmp"/shaka-player-*.tgz -C "$tmp" package/dist/shaka-player.compiled.js package/LICENSE
mkdir -p "$dest"
cp "$tmp/package/dist/shaka-player.compiled.js" "$dest/"
cp "$tmp/package/LICENSE" "$dest/shaka-player.LICENSE"
echo "shaka-player $VERSION (npm registry), Apache-2.0: see shaka-player.LICENSE" > "$dest/VERSION"
