#!/usr/bin/env bash
# chart-check.sh - renders and lints charts/hagw and validates the rendered manifests
# against the Kubernetes schemas, offline:
#   - helm-python-sdk (Helm v4 SDK in a wheel; no helm binary exists for this machine) for
#     `helm lint --strict` and `helm template` (with and without the ServiceMonitor and PrometheusRule), and
#     that values.schema.json rejects invalid values,
#   - kubernetes-validate --strict for every rendered object (unknown fields are errors).
# Both live in a venv under /var/cache/hagw/venv (HAGW_VENV), created idempotently.
#
# Also: deploy/prometheus/hagw-rules.yaml (the alert rules for a Prometheus without the
# operator) must be the chart's PrometheusRule rules exactly, `promtool check rules` must
# accept it, and its unit tests (`promtool test rules`, hagw-rules.test.yaml) must pass.
#
# Usage: scripts/chart-check.sh [--render-to FILE] [--write-rules]
#   --render-to FILE   also write the default rendering (CRD first, as `helm install` applies
#                      it) to FILE, for applying to a test API server.
#   --write-rules      write deploy/prometheus/hagw-rules.yaml from the chart (after editing
#                      charts/hagw/templates/prometheusrule.yaml).
# Environment: HAGW_VENV (venv dir), HAGW_K8S_VALIDATE_VERSION (schema version, default 1.33.0).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${HAGW_VENV:-/var/cache/hagw/venv}
K8S_VERSION=${HAGW_K8S_VALIDATE_VERSION:-1.33.0}
RENDER_TO=
WRITE_RULES=no
while (($#)); do
  case $1 in
    --render-to) RENDER_TO=${2:?--render-to needs a file}; shift 2 ;;
    --write-rules) WRITE_RULES=yes; shift ;;
    *) echo "usage: $0 [--render-to FILE] [--write-rules]" >&2; exit 2 ;;
  esac
done

say() { printf '[chart-check.sh] %s\n' "$*" >&2; }

# One installer at a time (parallel test binaries share the venv).
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock -w 600 9
if ! "$VENV/bin/python" -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
  say "creating $VENV with helm-python-sdk and kubernetes-validate"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0'
fi
flock -u 9

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$VENV/bin/python" - "$work" "$WRITE_RULES" <<'PY'
import json, sys
import helm_python as helm
import yaml

work, write_rules = sys.argv[1], sys.argv[2] == "yes"
chart_dir = "charts/hagw"
failed = False
# Neutron discovery read from host paths (kolla-ansible's volume mounted beside the default
# state path, which is mounted once), and discovery off (no hostPID).
host_paths = ["/var/lib/neutron", "/var/lib/docker/volumes/neutron_metadata_socket/_data"]
for name, values in [
    ("default", None),
    ("monitoring", {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}),
    ("neutron-host", {"neutron": {"root": "host", "statePaths": host_paths}}),
    ("no-discovery", {"neutron": {"discovery": False}}),
    ("no-ready-file", {"readyFile": ""}),
]:
    report = helm.lint(chart_dir, values, strict=True, namespace="hagw-system")
    for m in report.get("messages", []):
        print(f"lint ({name}): {m}", file=sys.stderr)
        failed |= m.get("severity", 0) >= 2
    if report.get("errors"):
        print(f"lint ({name}) errors: {report['errors']}", file=sys.stderr)
        failed = True
    chart = helm.Chart.load(chart_dir)
    manifests = chart.render(values, name="hagw", namespace="hagw-system", is_install=True)
    docs = [m for _, m in sorted(manifests.items()) if m.strip() and not _.endswith("NOTES.txt")]
    with open(f"{work}/{name}.yaml", "w") as f:
        f.write("\n---\n".join(docs) + "\n")
# values.schema.json rejects what the templates cannot use: a misspelt key, a wrong enum.
for bad in [{"backend": "ovn"}, {"metricsPortt": 9477}, {"log": {"format": "xml"}},
            {"neutron": {"root": "container"}}, {"neutron": {"statePaths": ["var/lib/neutron"]}},
            {"readyFile": "run/hagw/ready"}, {"readyFile": "/run/hagw/"}]:
    report = helm.lint(chart_dir, bad, strict=True, namespace="hagw-system")
    if not report.get("errors"):
        print(f"values.schema.json accepted invalid values {bad}", file=sys.stderr)
        failed = True
if failed:
    sys.exit("helm lint --strict failed")
# The plain rule file is the chart's PrometheusRule's spec (release name hagw), nothing else.
with open(f"{work}/monitoring.yaml") as f:
    rule = next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "PrometheusRule")
rules_file = "deploy/prometheus/hagw-rules.yaml"
if write_rules:
    with open(rules_file, "w") as f:
        f.write("# hagw's alert rules for a Prometheus without the operator: generated from the chart's\n"
                "# PrometheusRule (charts/hagw/templates/prometheusrule.yaml) by\n"
                "# `scripts/chart-check.sh --write-rules`; CI fails if the two differ.\n")
        yaml.safe_dump(rule["spec"], f, sort_keys=False, width=100)
with open(rules_file) as f:
    if yaml.safe_load(f) != rule["spec"]:
        sys.exit(f"{rules_file} differs from the chart's PrometheusRule: "
                 "run scripts/chart-check.sh --write-rules")
PY
promtool check rules deploy/prometheus/hagw-rules.yaml >&2 \
  || { say "promtool check rules failed"; exit 1; }
# Series in, alerts out: the rule expressions themselves (deploy/prometheus/hagw-rules.test.yaml).
promtool test rules deploy/prometheus/hagw-rules.test.yaml >&2 \
  || { say "promtool test rules failed"; exit 1; }

for f in "$work"/*.yaml charts/hagw/crds/*.yaml; do
  "$VENV/bin/kubernetes-validate" -k "$K8S_VERSION" --strict "$f" >&2 \
    || { say "kubernetes-validate --strict failed for $f"; cat "$f" >&2; exit 1; }
done
say "lint, render and schema validation passed"

if [[ -n $RENDER_TO ]]; then
  { cat charts/hagw/crds/*.yaml; echo "---"; cat "$work/default.yaml"; } > "$RENDER_TO"
fi
