#!/usr/bin/env bash
# Installs what ttv needs to build and test on Debian/Ubuntu: ffmpeg (preview clips, the final
# video, and the tests' checks), chromium and its WebDriver (the review page tests), tesseract
# (the animatic test's OCR) and, if missing, a Rust toolchain; then runs the command given.
# Safe to run again: what is there already is not installed twice.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ffmpeg: preview clips, the final video, the tests' checks; openssl: the tests' fake OAuth
# server verifies token signatures with it.
missing=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# chromium and chromedriver: the tests drive the review page in a headless browser (Debian's
# packages; they are looked for in /usr/bin).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# python3 with venv: the remote cache tests run moto's S3 server (PyPI moto[server]) from a
# venv in target/moto-venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# tesseract: the animatic test reads the words the preview backend writes on its frames.
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "setup: installing Rust with rustup" >&2
  as_root apt-get update -qq
  as_root apt-get install -y -qq curl build-essential >/dev/null
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
export PATH="$HOME/.cargo/bin:$PATH"

# moto's S3 server for the remote cache tests (a pinned version; installed once per clone).
repo="$(cd "$(dirname "$0")/.." && pwd)"
moto_venv="$repo/target/moto-venv"
if [ ! -x "$moto_venv/bin/moto_server" ]; then
  echo "setup: installing moto[server] in $moto_venv" >&2
  mkdir -p "$repo/target"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5'
fi
export TTV_TEST_MOTO_SERVER="$moto_venv/bin/moto_server"

# Then run the command given, if any (e.g. `cargo test`).
if [ "$#" -gt 0 ]; then
  exec "$@"
fi
