"""trustmesh.sidecar."""
