#!/usr/bin/env bash
# Checks the monitoring files in deploy/monitoring: the Prometheus configuration and alert rules
# (`promtool check config`, `promtool check rules`, and the rules' unit tests `promtool test rules`), the
# Alertmanager configuration (`amtool check-config`) and that the Grafana dashboard is valid JSON. Installs
# promtool and amtool (Debian's `prometheus` and `prometheus-alertmanager` packages) when they are missing;
# fails when it cannot. That the dashboard and the rules only use metrics the service exports is
# checked by the integration test `metrics::every_metric_the_dashboard_and_the_alerts_use_is_exported`.
set -euo pipefail
cd "$(dirname "$0")/../deploy/monitoring"

if ! command -v promtool >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
    echo "promtool or amtool is missing: installing Debian's prometheus and prometheus-alertmanager packages"
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
    # The packages start their servers where an init system runs; CI needs only the tools.
    $SUDO systemctl disable --now prometheus prometheus-alertmanager >/dev/null 2>&1 || true
fi
for tool in promtool amtool; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is not available and could not be installed" >&2; exit 1; }
done

echo "== promtool check config"
promtool check config prometheus/prometheus.yml
echo "== promtool check rules"
promtool check rules prometheus/alerts.yml
echo "== promtool test rules"
promtool test rules prometheus/alerts.test.yml
echo "== amtool check-config"
amtool check-config alertmanager/alertmanager.yml

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
