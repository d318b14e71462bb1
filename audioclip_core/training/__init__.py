"""Training: datasets over the manifests, the resumable loop, the paper's four stages."""
