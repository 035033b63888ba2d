"""trustmesh.store."""
