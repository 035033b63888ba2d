"""trustmesh.control."""
