"""The daemon under another manager: systemd units and Kubernetes manifests."""
