#!/usr/bin/env bash
# Install what the tests need, then run them. This is the README's test command; .ci/run calls it.
#   system packages (Debian/Ubuntu, when apt-get is there): chromium for the browser test,
#   dataset-fashion-mnist for the offline Fashion-MNIST tests (tests that need them skip without them)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

python -m pip install -q -r requirements-test.txt
python -m pytest "$@"
