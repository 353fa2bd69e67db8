"""Kubernetes manifests: every object parses and passes offline schema validation (kubernetes-validate,
bundled schemas); the ServiceMonitor (a CRD, no bundled schema) and the kustomizations get structural
checks; the probes, ports and names match the service's defaults."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deploy_helpers import ROOT, by_kind, container, env_of, k8s_objects, load_yaml_docs, pod_spec

from service.server import SERVICE_NAME
from service.settings import Settings, env_name

K8S = ROOT / "deploy" / "k8s"
DEFAULTS = Settings()
# The oldest Kubernetes the manifests target (native gRPC probes GA 1.27, backoffLimitPerIndex on by
# default from 1.29) and the newest schema bundled.
VERSIONS = ["1.30.0", "1.37.0"]
CRD_KINDS = {"ServiceMonitor"}
OBJECTS = k8s_objects(K8S)


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    return f"{item[0].relative_to(K8S)}:{item[1]['kind']}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("item", [o for o in OBJECTS if o[1]["kind"] not in CRD_KINDS], ids=_id)
def test_schema_valid_strict(item: tuple[Path, dict[str, Any]], version: str) -> None:
    kubernetes_validate.validate(item[1], version, strict=True)


def test_validator_rejects_a_broken_manifest() -> None:
    dep = by_kind(K8S, "Deployment")
    broken = {**dep, "spec": {**dep["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_every_manifest_is_in_a_kustomization() -> None:
    listed: set[Path] = set()
    for kfile in K8S.rglob("kustomization.yaml"):
        (k,) = load_yaml_docs(kfile)
        assert k["kind"] == "Kustomization" and k["namespace"] == "vae"
        for res in k["resources"]:
            assert (kfile.parent / res).is_file(), f"{kfile}: missing resource {res}"
            listed.add((kfile.parent / res).resolve())
    manifests = {p.resolve() for p, _ in OBJECTS}
    assert manifests == listed, f"not in any kustomization: {sorted(manifests - listed)}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (kustomize build)")
@pytest.mark.parametrize("folder", ["", "train", "generate"])
def test_kustomize_builds(folder: str) -> None:
    proc = subprocess.run(["kubectl", "kustomize", str(K8S / folder)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "namespace: vae" in proc.stdout


def _pods() -> list[dict[str, Any]]:
    return [o for _, o in OBJECTS if o["kind"] in ("Deployment", "Job")]


def test_pods_non_root_read_only_root_filesystem() -> None:
    for obj in _pods():
        pod, c = pod_spec(obj), container(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp, f"{obj['metadata']['name']}: read-only root needs a writable /tmp"
        assert "requests" in c["resources"] and {"cpu", "memory"} <= set(c["resources"]["requests"])


def test_deployment_gpu_probes_and_ports_match_service_defaults() -> None:
    dep = by_kind(K8S, "Deployment")
    c = container(dep)
    assert c["image"] == "vae-serve"
    for key in ("requests", "limits"):
        assert int(c["resources"][key]["nvidia.com/gpu"]) >= 1
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": DEFAULTS.port, "metrics": DEFAULTS.metrics_port}
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": DEFAULTS.port, "service": ""}
    assert c["readinessProbe"]["grpc"] == {"port": DEFAULTS.port, "service": SERVICE_NAME}
    assert SERVICE_NAME == "vae.v1.VaeService"
    env = env_of(c)
    assert int(env["VAE_PORT"]) == DEFAULTS.port and int(env["VAE_METRICS_PORT"]) == DEFAULTS.metrics_port
    known = {env_name(f) for f in Settings.__dataclass_fields__}
    assert not {k for k in env if k.startswith("VAE_")} - known


def test_termination_grace_covers_prestop_and_drain() -> None:
    dep = by_kind(K8S, "Deployment")
    c = container(dep)
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    grace = float(env_of(c).get("VAE_GRACE_SECONDS", DEFAULTS.grace_seconds))
    total = pod_spec(dep)["terminationGracePeriodSeconds"]
    assert total > float(pre[1]) + grace, f"{total}s must exceed preStop {pre[1]}s + drain {grace}s"


def test_model_volume_shared_by_training_and_serving() -> None:
    dep, train = by_kind(K8S, "Deployment"), by_kind(K8S, "Job", "vae-train")

    def claim_path(obj: dict[str, Any], path: str) -> tuple[str, str]:
        vols = {v["name"]: v for v in pod_spec(obj)["volumes"]}
        for m in container(obj)["volumeMounts"]:
            if path.startswith(m["mountPath"] + "/"):
                return vols[m["name"]]["persistentVolumeClaim"]["claimName"], path[len(m["mountPath"]):]
        raise AssertionError(f"{path} is on no volume of {obj['metadata']['name']}")

    served = claim_path(dep, env_of(container(dep))["VAE_MODEL_DIR"])
    written = claim_path(train, env_of(container(train))["MODEL_OUT"])
    assert served == written
    claims = {o["metadata"]["name"] for _, o in OBJECTS if o["kind"] == "PersistentVolumeClaim"}
    for obj in _pods():
        for v in pod_spec(obj)["volumes"]:
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims


def test_headless_service_selects_the_pods() -> None:
    svc, dep = by_kind(K8S, "Service"), by_kind(K8S, "Deployment")
    assert svc["spec"]["clusterIP"] == "None"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {p["name"] for p in container(dep)["ports"]}
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["grpc"]["port"] == DEFAULTS.port and ports["grpc"]["targetPort"] in names
    assert ports["metrics"]["port"] == DEFAULTS.metrics_port and ports["metrics"]["targetPort"] in names


def test_hpa_and_pdb_target_the_deployment() -> None:
    hpa, dep = by_kind(K8S, "HorizontalPodAutoscaler"), by_kind(K8S, "Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "cpu" in container(dep)["resources"]["requests"]  # Utilization needs a request
    pdb = by_kind(K8S, "PodDisruptionBudget")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_servicemonitor_structure() -> None:
    sm, svc = by_kind(K8S, "ServiceMonitor"), by_kind(K8S, "Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]} and ep["path"] == "/metrics"
    assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "scheme"}
    # job="vae" is what deploy/prometheus/alerts.yml and the dashboard group by.
    assert {"targetLabel": "job", "replacement": "vae"} in ep["relabelings"]


def _vae_help(command: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "vae_cli.main", command, "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_indexed_generate_job() -> None:
    job, svc = by_kind(K8S, "Job", "vae-generate"), by_kind(K8S, "Service")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] >= 2
    c = container(job)
    assert c["command"] == ["vae", "generate"] and c["image"] == "vae-serve"
    args = dict(a.lstrip("-").split("=", 1) for a in c["args"] if "=" in a)
    assert int(args["num-shards"]) == spec["completions"]
    assert "shard-index" not in args, "the shard index must come from JOB_COMPLETION_INDEX"
    host, _, port = args["target"].rpartition(":")
    assert int(port) == DEFAULTS.port
    assert host.startswith(f"{svc['metadata']['name']}.vae.svc")
    help_text = _vae_help("generate")
    assert "JOB_COMPLETION_INDEX" in help_text
    for a in c["args"]:
        assert a.split("=", 1)[0] in help_text, f"vae generate has no flag {a}"


def test_training_job_torchrun() -> None:
    job = by_kind(K8S, "Job", "vae-train")
    c = container(job)
    assert c["image"] == "vae-trainer"
    script = c["args"][0]
    assert "torchrun --standalone --nnodes=1 --nproc-per-node=\"$NPROC\" --no-python vae train" in script
    assert 'vae export "$RUN_DIR" --out "$MODEL_OUT"' in script
    env = env_of(c)
    assert int(env["NPROC"]) == int(c["resources"]["limits"]["nvidia.com/gpu"])
    shm = {v["name"]: v for v in pod_spec(job)["volumes"]}["shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"])
    help_text = _vae_help("train")
    for flag in [*env["TRAIN_ARGS"].split(), "--data", "--max-minutes", "--no-progress", "--resume"]:
        if flag.startswith("--"):
            assert flag in help_text, f"vae train has no flag {flag}"
