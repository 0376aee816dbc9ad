"""Kubernetes manifests that run the daemon as a StatefulSet, one replica per shard.

``export --format kubernetes`` and ``deploy/kubernetes/`` (written by
``scripts/gen_kubernetes.py``) come from here, so they never drift apart. Each
replica has its own persistent volume as its home (the state file survives the pod
moving), reads the apply file from a ConfigMap and runs the streams of its shard.
Pure: builds documents, writes nothing.
"""

from __future__ import annotations

from typing import Any

from streamalchemy import __version__

NAME = "streamalchemy"
IMAGE = f"{NAME}:{__version__}"
METRICS_PORT = 9464
DATA = "/data"  # the persistent volume
HOME = f"{DATA}/home"  # a directory the daemon creates 0700: the volume root is group-writable
CONFIG_DIR = "/etc/streamalchemy"
APPLY_FILE = f"{CONFIG_DIR}/streams.toml"
UID = 10001
# Stopping every stream takes a few seconds (SIGTERM, then SIGKILL after 5 s);
# the rest is margin for a slow node.
GRACE_SECONDS = 60

Manifest = dict[str, Any]

_LABELS = {"app.kubernetes.io/name": NAME}
_HEADER = (
    "# StreamAlchemy on Kubernetes: a StatefulSet with one replica per shard.\n"
    "# Written by `streamalchemy export --format kubernetes` / scripts/gen_kubernetes.py.\n"
    "# Set STREAMALCHEMY_RTSP_URL to your RTSP server (e.g. a MediaMTX Service) and\n"
    "# the image to one you built from deploy/kubernetes/Containerfile.\n"
)


def _meta(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "labels": dict(_LABELS), **extra}


def configmap(streams_toml: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{NAME}-streams"),
        "data": {"streams.toml": streams_toml},
    }


def services() -> list[Manifest]:
    port = {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(NAME),
        "spec": {
            "clusterIP": "None",  # stable pod names for the StatefulSet: streamalchemy-0, ...
            "selector": dict(_LABELS),
            "ports": [port],
        },
    }
    metrics = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(
            f"{NAME}-metrics",
            annotations={
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                "prometheus.io/path": "/metrics",
            },
        ),
        "spec": {"type": "ClusterIP", "selector": dict(_LABELS), "ports": [port]},
    }
    return [headless, metrics]


def _probe(period: int, failures: int) -> dict[str, Any]:
    return {
        "exec": {"command": [NAME, "daemon", "status", "--json"]},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def statefulset(shards: int, image: str = IMAGE) -> Manifest:
    env = {
        "STREAMALCHEMY_HOME": HOME,
        "STREAMALCHEMY_SHARDS": str(shards),
        "STREAMALCHEMY_METRICS_ADDR": f"0.0.0.0:{METRICS_PORT}",
        "STREAMALCHEMY_RTSP_URL": "rtsp://mediamtx:8554",
        "STREAMALCHEMY_AUTOSTART": "0",  # the probes must not start a second daemon
        "STREAMALCHEMY_MEDIAMTX": "off",
        "HOME": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    container = {
        "name": NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [NAME, "daemon", "run", "--apply", APPLY_FILE, "--shard", "auto"],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "startupProbe": _probe(2, 30),
        "readinessProbe": _probe(10, 3),
        "livenessProbe": _probe(20, 3),
        "resources": {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"memory": "2Gi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "home", "mountPath": DATA},
            {"name": "streams", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(NAME),
        "spec": {
            "serviceName": NAME,
            "replicas": shards,
            # Shards are independent: start and stop them all at once.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": dict(_LABELS)},
            "template": {
                "metadata": {"labels": dict(_LABELS)},
                "spec": {
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "fsGroupChangePolicy": "OnRootMismatch",
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "streams", "configMap": {"name": f"{NAME}-streams"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "home", "labels": dict(_LABELS)},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }


def manifests(streams_toml: str, shards: int, image: str = IMAGE) -> list[Manifest]:
    return [configmap(streams_toml), *services(), statefulset(shards, image)]


def kustomization() -> Manifest:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "labels": [{"pairs": {"app.kubernetes.io/part-of": NAME}}],
        "resources": ["configmap.yaml", "services.yaml", "statefulset.yaml"],
        "images": [{"name": NAME, "newName": NAME, "newTag": __version__}],
    }


def dump(documents: list[Manifest]) -> str:
    """Multi-document YAML, keys in the order written, with a header saying what it is."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        # The apply file reads as itself inside the ConfigMap: a literal block.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    body = yaml.dump_all(documents, Dumper=Dumper, sort_keys=False, explicit_start=True)
    return _HEADER + body
