"""Fixtures for the proxy tests: one CA per test module, identities for web and api."""

from __future__ import annotations

import pytest

from tests.sidecar_proxy.harness import API, WEB, Pki, StaticIdentity, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def web(pki: Pki) -> StaticIdentity:
    return pki.identity(WEB)


@pytest.fixture(scope="module")
def api(pki: Pki) -> StaticIdentity:
    return pki.identity(API)
