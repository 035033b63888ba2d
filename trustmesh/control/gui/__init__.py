"""The control plane's web GUI: topology, workloads, policy and traces of a running mesh.

Served on its own plain-HTTP listener (`GuiListener`, `--gui`), together with an OTLP/HTTP trace
receiver at `/v1/traces`. See docs/gui.md.
"""
