"""trustmesh.sidecar.outbound."""
