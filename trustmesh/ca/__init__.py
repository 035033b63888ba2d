"""trustmesh.ca."""
