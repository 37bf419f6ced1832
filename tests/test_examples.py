"""The deploy examples: Kubernetes manifests validate offline, the compose file wires the
sidecar as the README says, and every corsproxy config they carry passes `corsproxy check --strict`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
K8S_DIR = EXAMPLES / "kubernetes"
# A version whose schemas kubernetes-validate ships (it works offline); 1.30 is long supported by clouds.
K8S_VERSION = "1.30.0"
MANIFESTS = sorted(K8S_DIR.glob("*.yaml"))
CONFIG_PATH = "/etc/corsproxy/config.yaml"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(path: Path, kind: str) -> dict[str, Any]:
    found = [d for d in _docs(path) if d["kind"] == kind]
    assert len(found) == 1, f"{path.name}: {len(found)} {kind}(s)"
    return found[0]


def _config_map(path: Path) -> dict[str, Any]:
    """The ConfigMap with the rules (config.yaml); the SaaS example keeps its origins in another."""
    found = [d for d in _docs(path) if d["kind"] == "ConfigMap" and "config.yaml" in d["data"]]
    assert len(found) == 1, f"{path.name}: {len(found)} ConfigMap(s) with config.yaml"
    return found[0]


def _files(path: Path) -> dict[str, str]:
    """Every file the manifest's ConfigMaps put into the config folder."""
    return {name: text for d in _docs(path) if d["kind"] == "ConfigMap" for name, text in d["data"].items()}


def _configmap_names(volume: dict[str, Any]) -> list[str]:
    if "projected" in volume:
        return [s["configMap"]["name"] for s in volume["projected"]["sources"] if "configMap" in s]
    return [volume["configMap"]["name"]]


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _check(config_text: str, tmp_path: Path, files: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    for name, text in (files or {}).items():  # origin files beside the config, as the ConfigMap mounts them
        (tmp_path / name).write_text(text)
    path = tmp_path / "config.yaml"
    path.write_text(config_text)
    # --strict: a lint warning (a risky rule) in an example fails too.
    return subprocess.run([sys.executable, "-m", "corsproxy", "check", "--strict", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)


def test_examples_have_both_kubernetes_manifests():
    assert [p.name for p in MANIFESTS] == ["saas.yaml", "sidecar.yaml", "standalone.yaml"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifest_validates_strictly_against_the_schemas(manifest):
    for doc in _docs(manifest):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError


def test_kubernetes_validation_rejects_a_misspelled_field():
    # Proves the validation above can fail: strict mode rejects unknown properties.
    deployment = _one(K8S_DIR / "standalone.yaml", "Deployment")
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_configmap_config_passes_corsproxy_check(manifest, tmp_path):
    config = _config_map(manifest)["data"]["config.yaml"]
    res = _check(config, tmp_path, _files(manifest))
    assert (res.returncode, res.stderr) == (0, ""), res.stdout


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_corsproxy_probes_admin_and_mounts_the_configmap(manifest):
    docs = _docs(manifest)
    deployment, configmap = _one(manifest, "Deployment"), _config_map(manifest)
    proxy = _container(deployment, "corsproxy")
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"http": 8080, "admin": 9901}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # The ConfigMap is mounted as the directory holding the image's config path (not subPath: updates arrive).
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = [m for m in proxy["volumeMounts"] if m["mountPath"] == str(Path(CONFIG_PATH).parent)]
    assert len(mounts) == 1 and "subPath" not in mounts[0]
    assert configmap["metadata"]["name"] in _configmap_names(volumes[mounts[0]["name"]])
    assert "config.yaml" in configmap["data"]
    assert proxy["securityContext"]["runAsNonRoot"] is True
    if proxy["securityContext"].get("readOnlyRootFilesystem"):  # --workers writes its metrics files to /tmp
        tmp = next(m for m in proxy["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]]
    # The pod must outlive corsproxy's drain on SIGTERM.
    drain = yaml.safe_load(configmap["data"]["config.yaml"])["listen"]["drain_timeout"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    assert [d["kind"] for d in docs].count("Service") == 1


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_service_targets_corsproxy_not_the_api(manifest):
    deployment, service = _one(manifest, "Deployment"), _one(manifest, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, "http")]
    # "http" names corsproxy's 8080, and no other container in the pod.
    named_http = [(c["name"], p["containerPort"]) for c in deployment["spec"]["template"]["spec"]["containers"]
                  for p in c.get("ports", []) if p.get("name") == "http"]
    assert named_http == [("corsproxy", 8080)]


def test_kubernetes_sidecar_runs_the_api_and_corsproxy_in_one_pod():
    manifest = K8S_DIR / "sidecar.yaml"
    deployment = _one(manifest, "Deployment")
    names = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert names == ["api", "corsproxy"]
    api_port = _container(deployment, "api")["ports"][0]["containerPort"]
    config = yaml.safe_load(_config_map(manifest)["data"]["config.yaml"])
    assert config["upstream"]["url"] == f"http://127.0.0.1:{api_port}"  # the API in the same pod


def test_kubernetes_standalone_runs_three_replicas_of_corsproxy_alone():
    manifest = K8S_DIR / "standalone.yaml"
    deployment = _one(manifest, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["corsproxy"]
    budget = _one(manifest, "PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_kubernetes_saas_keeps_the_origins_file_in_its_own_configmap_beside_the_rules(tmp_path):
    manifest = K8S_DIR / "saas.yaml"
    maps = {d["metadata"]["name"]: d["data"] for d in _docs(manifest) if d["kind"] == "ConfigMap"}
    assert {name: sorted(data) for name, data in maps.items()} == {
        "corsproxy-saas-rules": ["config.yaml"], "corsproxy-customer-origins": ["customer-origins.txt"]}
    rule = yaml.safe_load(maps["corsproxy-saas-rules"]["config.yaml"])["rules"][0]
    assert {"file": "customer-origins.txt"} in rule["allow_origins"]
    deployment = _one(manifest, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert _configmap_names(volumes["config"]) == ["corsproxy-saas-rules", "corsproxy-customer-origins"]
    # Without the origins file beside it, the rules do not load: the file is really used.
    res = _check(maps["corsproxy-saas-rules"]["config.yaml"], tmp_path)
    assert res.returncode == 2 and "customer-origins.txt" in res.stderr


def _compose() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "docker-compose.yml").read_text())


def test_compose_runs_the_api_and_corsproxy_as_its_sidecar():
    services = _compose()["services"]
    assert sorted(services) == ["api", "corsproxy"]
    proxy = services["corsproxy"]
    assert proxy["depends_on"] == ["api"]
    assert proxy["build"] == ".."  # the repository's Dockerfile
    assert "ports" not in services["api"]  # the API is reachable only through corsproxy
    api_port = services["api"]["expose"][0]
    config = yaml.safe_load((EXAMPLES / "corsproxy.yaml").read_text())
    assert config["upstream"]["url"] == f"http://api:{api_port}"


def test_compose_publishes_the_proxy_and_keeps_admin_on_loopback():
    assert _compose()["services"]["corsproxy"]["ports"] == ["8080:8080", "127.0.0.1:9901:9901"]


def test_compose_mounts_the_rules_over_the_image_config():
    volumes = _compose()["services"]["corsproxy"]["volumes"]
    assert volumes == [f"./corsproxy.yaml:{CONFIG_PATH}:ro"]
    assert (EXAMPLES / "corsproxy.yaml").is_file()


def test_compose_stop_grace_period_outlasts_the_drain():
    grace = _compose()["services"]["corsproxy"]["stop_grace_period"]
    drain = yaml.safe_load((EXAMPLES / "corsproxy.yaml").read_text())["listen"]["drain_timeout"]
    assert grace.endswith("s") and int(grace[:-1]) > drain


def test_compose_config_passes_corsproxy_check(tmp_path):
    res = _check((EXAMPLES / "corsproxy.yaml").read_text(), tmp_path)
    assert (res.returncode, res.stderr) == (0, ""), res.stdout


def test_corsproxy_check_fails_on_a_broken_example_config(tmp_path):
    # Proves the checks above can fail: a typo in a rule is reported, exit 2.
    broken = (EXAMPLES / "corsproxy.yaml").read_text().replace("allow_origins:", "alow_origins:", 1)
    res = _check(broken, tmp_path)
    assert res.returncode == 2
    assert "alow_origins" in res.stderr


def test_examples_readme_explains_each_example():
    readme = (EXAMPLES / "README.md").read_text()
    for name in ("docker-compose.yml", "corsproxy.yaml", "kubernetes/sidecar.yaml", "kubernetes/standalone.yaml",
                 "kubernetes/saas.yaml"):
        assert name in readme, name
