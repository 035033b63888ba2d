"""Fixtures for trustmesh.identity tests (pure code: no fixtures needed beyond hypothesis)."""
