"""trustmesh: a zero-trust service mesh.

SPIFFE identities from trustmesh's own CA, mutual-TLS sidecars on trio,
authorization policy kept as files in git.
"""

__version__ = "0.1.0"
