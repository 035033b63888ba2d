"""Fixtures for the fuzz tests: a CA and the web/api identities (module scope), as the proxy tests use."""

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
