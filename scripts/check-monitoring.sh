#!/usr/bin/env bash
# Checks the monitoring files in deploy/monitoring: the Prometheus configuration and alert rules
# (`promtool check config`, `promtool check rules`, and the rules' unit tests `promtool test rules`) and
# that the Grafana dashboard is valid JSON. Installs promtool (Debian's `prometheus` package) when it is
# missing; fails when it cannot. That the dashboard and the rules only use metrics the service exports is
# checked by the integration test `metrics::every_metric_the_dashboard_and_the_alerts_use_is_exported`.
set -euo pipefail
cd "$(dirname "$0")/../deploy/monitoring"

if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool is missing: installing Debian's prometheus package"
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package starts a Prometheus server where an init system runs; CI needs only the tool.
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null 2>&1 || { echo "promtool is not available and could not be installed" >&2; exit 1; }

echo "== promtool check config"
promtool check config prometheus/prometheus.yml
echo "== promtool check rules"
promtool check rules prometheus/alerts.yml
echo "== promtool test rules"
promtool test rules prometheus/alerts.test.yml

echo "== dashboards parse"
for dashboard in grafana/dashboards/*.json; do
    if command -v python3 >/dev/null 2>&1; then
        python3 -m json.tool "$dashboard" >/dev/null
    elif command -v jq >/dev/null 2>&1; then
        jq empty "$dashboard"
    else
        echo "neither python3 nor jq is available to parse $dashboard" >&2
        exit 1
    fi
    echo "$dashboard: valid JSON"
done
