#!/usr/bin/env bash
# Install Debian's headless Chromium for the browser test (tests/test_browser.py), which drives JupyterLab with it.
# Installs only when /usr/bin/chromium is missing, we are root and apt-get exists; otherwise says why it skips.
# Never prompts; quiet; idempotent. It never fails `make test`: without Chromium the browser test skips itself
# (or fails with the reason when LAB_REQUIRE_BROWSER=1, as in CI).
set -uo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup_browser: $CHROMIUM is missing and we are not root: skipping its install (as root: apt-get install chromium)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_browser: $CHROMIUM is missing and there is no apt-get here: skipping its install (install Chromium yourself)"
  exit 0
fi

echo "setup_browser: installing Debian's chromium with apt-get (once)"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends chromium fonts-liberation; } >"$log" 2>&1; then
  # No mirror reachable, a held package...: show why and carry on (the test skips, or fails under CI with the reason).
  echo "setup_browser: apt-get failed to install chromium; the browser test will say so. Last lines:"
  tail -n 20 "$log"
fi
rm -f "$log"
if [ -x "$CHROMIUM" ]; then
  echo "setup_browser: $("$CHROMIUM" --version 2>/dev/null || echo chromium) installed"
fi
exit 0
