# Headless Chromium for the browser test (tests/test_ui_browser.py). Sourced by .ci/run (set -euo pipefail).
# Installs Debian's `chromium` where it is missing and exports its path; nothing to start or stop.
if ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium (apt-get)"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi
LRA_CHROMIUM=$(command -v chromium)
export LRA_CHROMIUM
"$LRA_CHROMIUM" --headless --no-sandbox --disable-gpu --version 2>/dev/null || true
