"""trustmesh.sidecar.inbound."""
