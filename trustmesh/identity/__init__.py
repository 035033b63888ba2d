"""trustmesh.identity."""
