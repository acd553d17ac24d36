#!/usr/bin/env bash
# Debian packages the service tests need, installed only when missing (safe to run every time):
#   prometheus -> promtool (`promtool check metrics`) and the prometheus server (scrape test)
#   systemd    -> systemd-analyze (unit verify + security rating)
#   iproute2   -> ip (`ip netns`: the multi-host topology test)
#   mosquitto  -> the MQTT broker the bridge test starts on 127.0.0.1 (mosquitto_passwd for its auth test)
#   chromium, chromium-driver -> the headless browser of the live-view test (Selenium drives it)
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# mosquitto lives in /usr/sbin, which a non-root PATH may lack
PATH="$PATH:/usr/sbin" command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if [ ${#missing[@]} -eq 0 ]; then
    echo "ci-system-deps: promtool, prometheus, systemd-analyze, ip, mosquitto, chromium and chromedriver present"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "ci-system-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "ci-system-deps: installing ${missing[*]}"
$sudo apt-get update -qq
# --no-install-recommends: the prometheus package would pull in exporters the tests do not use;
# policy-rc.d-less containers just skip starting the packaged service
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v systemd-analyze >/dev/null \
    && command -v ip >/dev/null
PATH="$PATH:/usr/sbin" command -v mosquitto >/dev/null && command -v chromium >/dev/null && command -v chromedriver >/dev/null
