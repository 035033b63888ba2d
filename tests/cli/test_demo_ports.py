"""The demo's port plan: every listener it will start gets a port of its own."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from trustmesh.cli.demo import DemoRun, plan_ports
from trustmesh.loopback_ports import free_port, free_ports


def test_free_ports_are_distinct() -> None:
    ports = free_ports(200)
    assert len(set(ports)) == 200


def test_the_plan_never_gives_two_listeners_one_port(tmp_path: Path) -> None:
    """A run once gave the web and db apps the same port; web never started and sent nothing."""
    for _ in range(500):  # the old way, free_port() in a row, repeated a port in 3 plans of 1,000
        run = DemoRun(tmp_path, timedelta(seconds=1), lambda line: None)
        plan_ports(run)
        ports = []
        for service in run.services.values():
            ports += [service.app_port, service.inbound_port, service.admin_port]
            ports += service.outbound_ports.values()
        assert len(ports) == len(set(ports)) == 3 * 3 + 3  # three services, three calls


def test_a_port_handed_out_is_not_handed_out_again_soon() -> None:
    """One at a time, as most callers ask: the kernel may repeat a released port; we must not."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == 300
