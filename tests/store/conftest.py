"""Store tests use a real SQLite file in a temp dir (no fixtures beyond pytest's)."""
