#!/usr/bin/env bash
# Checks deploy/kubernetes offline (no cluster): the built-in resources against the Kubernetes schemas that
# kubernetes-validate bundles (pinned in scripts/python-requirements.txt), strictly; the custom resources
# (PodMonitor, ScaledObject), which no bundled schema covers, for the fields they need; the kustomization and
# what must agree across the files. The details are in scripts/check_kubernetes.py. That the ConfigMap's
# configuration loads is checked by the integration test `deploy::the_kubernetes_configuration_loads…`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/python-tools.sh
source scripts/python-tools.sh
"$PYTHON_TOOLS/bin/python" scripts/check_kubernetes.py
