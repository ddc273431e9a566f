#!/usr/bin/env bash
# Installs what ttv needs to build and test on Debian/Ubuntu: ffmpeg (preview clips, the final
# video, and the tests' checks) and, if missing, a Rust toolchain. Safe to run again.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  echo "setup: installing ffmpeg" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup: cargo is in ~/.cargo/bin; add it to PATH: . \"\$HOME/.cargo/env\"" >&2
  else
    echo "setup: installing Rust with rustup" >&2
    as_root apt-get install -y -qq curl build-essential >/dev/null
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    echo "setup: now run: . \"\$HOME/.cargo/env\"" >&2
  fi
  exit 1
fi
