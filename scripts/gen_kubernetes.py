"""Write deploy/kubernetes/ from streamalchemy.deploy.kubernetes, so the repository's manifests and
``export --format kubernetes`` never drift (tests/test_kube.py fails when they do).

Usage: python scripts/gen_kubernetes.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamalchemy.deploy import kubernetes as kube

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"

EXAMPLE = """\
# The streams the fleet runs: one table per stream, keys as `streamalchemy start`'s options.
# Each replica runs the streams that rendezvous hashing gives its shard.

[streams.cam1]
testsrc = true
resolution = 720
fps = 15
output = "null"

[streams.lobby]
url = "rtsp://${LOBBY_USER}:${LOBBY_PASS}@10.0.0.7/stream"
codec = "copy"
"""


def files() -> dict[str, str]:
    configmap, *services, statefulset = kube.manifests(EXAMPLE, shards=3)
    return {
        "configmap.yaml": kube.dump([configmap]),
        "services.yaml": kube.dump(services),
        "statefulset.yaml": kube.dump([statefulset]),
        "kustomization.yaml": kube.dump([kube.kustomization()]),
    }


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, text in files().items():
        path = DEPLOY / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text)
    if check and stale:
        print(f"deploy/kubernetes is stale: {', '.join(stale)}; run scripts/gen_kubernetes.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
