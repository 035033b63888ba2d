"""trustmesh.policy."""
