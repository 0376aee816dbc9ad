"""Kubernetes manifests: the repository's match the generator, and every one validates strictly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from streamalchemy.core.saved import to_config
from streamalchemy.deploy import kubernetes as kube

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


def validate_strict(*paths: Path) -> None:
    done = subprocess.run(
        [str(VALIDATE), "--strict", "--no-warn", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout and "fail" not in done.stdout.lower()


def test_deploy_dir_is_generated_from_kube() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/gen_kubernetes.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout


def test_repository_manifests_validate_strictly() -> None:
    manifests = [p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"]
    assert len(manifests) == 3
    validate_strict(*manifests)


def test_statefulset_runs_each_shard_as_the_contract_says() -> None:
    (sts,) = yaml.safe_load_all((DEPLOY / "statefulset.yaml").read_text())
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert sts["spec"]["replicas"] == int(env["STREAMALCHEMY_SHARDS"])
    assert container["command"][-4:] == ["--apply", kube.APPLY_FILE, "--shard", "auto"]
    assert env["STREAMALCHEMY_METRICS_ADDR"] == "0.0.0.0:9464"
    assert container["readinessProbe"]["exec"]["command"][-3:] == ["daemon", "status", "--json"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "home"
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_exported_manifests_validate_strictly(tmp_path: Path) -> None:
    from streamalchemy.apply import declarative
    from streamalchemy.core.spec import spec_from_request
    from streamalchemy.persist import new_entry

    spec = spec_from_request({"name": "cam1", "url": "rtsp://u:secret@h/x", "codec": "copy"})
    tables = declarative.export_tables({"cam1": new_entry(to_config(spec), 1.0)})
    text = kube.dump(kube.manifests(declarative.export_toml(tables), shards=5))
    assert "secret" not in text
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    validate_strict(path)
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "Service", "StatefulSet"]
    assert declarative.parse(docs[0]["data"]["streams.toml"]).keys() == {"cam1"}
    assert docs[-1]["spec"]["replicas"] == 5
