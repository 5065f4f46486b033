"""deploy/k8s: the manifests parse and hang together (no cluster needed).

Checks what a typo would silently break: every file listed by kustomization.yaml exists and
parses; selectors match pod labels; Services point at named container ports that exist; nodes are
a StatefulSet with a volume claim mounted at the data dir, a headless Service, stable node ids and
region/zone from the node's topology labels; placement and edges are Deployments; every pod runs
as non-root with a probe on a declared port; commands use the image's entry point and flags the
roles really have.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _load_all(paths: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """{file name: [documents]}, with PyYAML; without it in this venv, through a Python that has
    it (Debian's python3-yaml comes with docker-compose, which .ci/run installs)."""
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
                for p in paths}
    for python in ("/usr/bin/python3", shutil.which("python3")):
        if python and subprocess.run([python, "-c", "import yaml"],
                                     capture_output=True).returncode == 0:
            code = ("import json, sys, yaml; print(json.dumps({p.rsplit('/', 1)[-1]: "
                    "[d for d in yaml.safe_load_all(open(p)) if d is not None] "
                    "for p in sys.argv[1:]}))")
            out = subprocess.run([python, "-c", code, *map(str, paths)], capture_output=True,
                                 text=True, check=True).stdout
            return dict(json.loads(out))
    pytest.skip("no YAML parser: PyYAML is neither in this environment nor in a system python3")


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    return _load_all(sorted(K8S.glob("*.yaml")))


def _objects(manifests: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for docs in manifests.values():
        for d in docs:
            if d.get("kind") == "Kustomization":
                continue
            key = (d["kind"], d["metadata"]["name"])
            assert key not in out, f"duplicate {key}"
            out[key] = d
    return out


def test_kustomization_lists_every_manifest(manifests: dict[str, list[dict[str, Any]]]) -> None:
    (kust,) = manifests["kustomization.yaml"]
    assert kust["kind"] == "Kustomization"
    listed = set(kust["resources"])
    on_disk = {name for name in manifests if name != "kustomization.yaml"}
    assert listed == on_disk
    for docs in manifests.values():
        for d in docs:
            assert {"apiVersion", "kind", "metadata"} <= d.keys() or d["kind"] == "Kustomization"


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_workload_kinds_and_selectors(manifests: dict[str, list[dict[str, Any]]]) -> None:
    objs = _objects(manifests)
    assert ("StatefulSet", "duro-node") in objs
    assert ("Deployment", "duro-placement") in objs
    assert ("Deployment", "duro-edge") in objs
    for (kind, name), obj in objs.items():
        if kind not in ("StatefulSet", "Deployment"):
            continue
        sel = obj["spec"]["selector"]["matchLabels"]
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items(), name
        spec = _pod_spec(obj)
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, name
        for c in spec["containers"]:
            assert c["image"] == "duro", name  # rewritten by kustomization's images:
            ports = {p["name"] for p in c["ports"]}
            for probe in ("readinessProbe", "livenessProbe"):
                action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert action and action["port"] in ports, (name, probe)
    assert objs[("Deployment", "duro-placement")]["spec"]["replicas"] >= 2


def test_services_reach_declared_ports(manifests: dict[str, list[dict[str, Any]]]) -> None:
    objs = _objects(manifests)
    workloads = [o for (k, _), o in objs.items() if k in ("StatefulSet", "Deployment")]
    services = [o for (k, _), o in objs.items() if k == "Service"]
    assert {s["metadata"]["name"] for s in services} >= {"duro-node", "duro-placement",
                                                         "duro-edge"}
    for svc in services:
        sel = svc["spec"]["selector"]
        matching = [w for w in workloads
                    if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matching) == 1, svc["metadata"]["name"]
        ports = {p["name"] for c in _pod_spec(matching[0])["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (svc["metadata"]["name"], p)


def test_nodes_statefulset(manifests: dict[str, list[dict[str, Any]]]) -> None:
    objs = _objects(manifests)
    sts = objs[("StatefulSet", "duro-node")]
    svc = objs[("Service", sts["spec"]["serviceName"])]
    assert svc["spec"]["clusterIP"] == "None"  # headless: per-pod DNS names
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (c,) = _pod_spec(sts)["containers"]
    assert c["args"][0] == "node"
    env = _env(c)
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mount[claim["metadata"]["name"]] == env["DURO_NODE_DATA_DIR"]
    assert env["DURO_NODE_NODE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["DURO_NODE_REGION"] == {
        "fieldRef": {"fieldPath": "metadata.labels['topology.kubernetes.io/region']"}}
    assert env["DURO_NODE_ZONE"] == {
        "fieldRef": {"fieldPath": "metadata.labels['topology.kubernetes.io/zone']"}}
    assert env["DURO_NODE_ADVERTISE"].startswith("$(POD_NAME).duro-node.")
    assert _pod_spec(sts)["securityContext"]["fsGroup"] == _pod_spec(sts)["securityContext"][
        "runAsUser"]


def test_settings_name_real_config_fields(manifests: dict[str, list[dict[str, Any]]]) -> None:
    """Every DURO_NODE_*/DURO_EDGE_* variable names a field of the role's config dataclass."""
    from dataclasses import fields

    from duro.node.config import NodeConfig

    known = {"DURO_NODE_" + f.name.upper() for f in fields(NodeConfig)}
    try:
        from duro.edge.config import EdgeConfig
    except ImportError:  # the edge not built: its variables are not checked
        edge_known = None
    else:
        edge_known = {"DURO_EDGE_" + f.name.upper() for f in fields(EdgeConfig)}
    objs = _objects(manifests)
    names = set(objs[("ConfigMap", "duro-config")]["data"])
    for (kind, _), obj in objs.items():
        if kind in ("StatefulSet", "Deployment"):
            for c in _pod_spec(obj)["containers"]:
                names |= set(_env(c))
    for name in names:
        if name.startswith("DURO_NODE_"):
            assert name in known, name
        if name.startswith("DURO_EDGE_") and edge_known is not None:
            assert name in edge_known, name
    # Placement flags in args exist in its parser.
    from duro.placement.config import build_parser

    (c,) = _pod_spec(objs[("Deployment", "duro-placement")])["containers"]
    assert "duro.placement" in c["command"]
    build_parser().parse_args(c["args"])


def test_every_process_mounts_its_certificate(tmp_path: Path) -> None:
    """mTLS on Kubernetes: make-certs.sh makes the files the Secrets are generated from, and
    after ``kubectl kustomize`` every workload mounts a Secret that holds the CA and the
    certificate and key its TLS settings name (the node's by its pod name)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (its built-in kustomize) is not installed")
    import sys

    import yaml

    work = tmp_path / "k8s"
    shutil.copytree(K8S, work, ignore=shutil.ignore_patterns("certs"))
    env = {**__import__("os").environ, "DURO": f"{sys.executable} -m duro.cli",
           "DURO_CA_DIR": str(tmp_path / "ca")}
    subprocess.run(["bash", str(work / "make-certs.sh")], env=env, check=True,
                   capture_output=True)
    assert not (work / "certs" / "ca-key.pem").exists()  # the CA's key stays out of the Secrets
    out = subprocess.run([kubectl, "kustomize", str(work)], capture_output=True, text=True,
                         check=True).stdout
    objs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    secrets = {name: set(d["data"]) for (kind, name), d in objs.items() if kind == "Secret"}
    for (kind, name), obj in objs.items():
        if kind not in ("StatefulSet", "Deployment"):
            continue
        spec = _pod_spec(obj)
        (c,) = spec["containers"]
        env_vars = _env(c)
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        vols = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        prefix = {"duro-node": "DURO_NODE_", "duro-placement": "DURO_PLACEMENT_",
                  "duro-edge": "DURO_EDGE_"}[name]
        # The volume the TLS files are in (edges also mount the Gateway's tokens).
        (vol, secret), = ((v, s) for v, s in vols.items()
                          if mounts[v] == env_vars[prefix + "TLS_CA"].rpartition("/")[0])
        pods = [f"duro-node-{i}" for i in range(obj["spec"].get("replicas", 1))] \
            if kind == "StatefulSet" else ["any"]
        for pod in pods:
            for setting in ("TLS_CA", "TLS_CERT", "TLS_KEY"):
                path = env_vars[prefix + setting].replace("$(POD_NAME)", pod)
                directory, _, file = path.rpartition("/")
                assert directory == mounts[vol] and file in secrets[secret], (name, path)
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]


def test_edges_read_gateway_tokens_from_a_secret(
        manifests: dict[str, list[dict[str, Any]]]) -> None:
    """The Gateway's tokens file is a Secret generated from deploy/k8s/gateway-tokens.toml,
    mounted where DURO_EDGE_GATEWAY_TOKENS_FILE points; as shipped it parses and holds no token
    (every Gateway call refused until an operator adds one: docs/security.md)."""
    from duro.edge.tokens import parse_tokens_file

    objs = _objects(manifests)
    spec = _pod_spec(objs[("Deployment", "duro-edge")])
    (c,) = spec["containers"]
    path = _env(c)["DURO_EDGE_GATEWAY_TOKENS_FILE"]
    directory, _, key = path.rpartition("/")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == directory]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]["secretName"]
    assert "DURO_EDGE_GATEWAY_TOKENS" not in _env(c)  # no token in the manifest itself
    (kust,) = manifests["kustomization.yaml"]
    (gen,) = [g for g in kust["secretGenerator"] if g["name"] == secret]
    sources = dict(f.split("=", 1) if "=" in f else (f.rsplit("/", 1)[-1], f)
                   for f in gen["files"])
    assert parse_tokens_file(K8S / sources[key]) == []
