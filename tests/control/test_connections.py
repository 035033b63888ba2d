"""Kept-alive API connections: the idle timeout, requests on one connection, shutdown.

The control plane serves hypercorn over its own TLS stream (`tls_stream.TlsStream`) with a
cheaper keep-alive timer (`api_connection.ApiConnection`); these are the behaviours a
client sees of both, over real TLS on loopback.
"""

from __future__ import annotations

import json
import ssl
from datetime import timedelta
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trustmesh.clock import ManualClock
from trustmesh.control.testing import ControlPlaneHarness, start_control_plane

HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: cp\r\n\r\n"


async def _connect(harness: ControlPlaneHarness) -> trio.SSLStream[trio.SocketStream]:
    host, port = harness.address.rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port))
    stream = trio.SSLStream(tcp, harness.verified_context(), server_hostname=host)
    await stream.do_handshake()
    return stream


async def _read_response(stream: trio.SSLStream[trio.SocketStream]) -> tuple[bytes, bytes]:
    """(head, body) of one response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return head, body


async def _closed_by_server(stream: trio.abc.ReceiveStream) -> bool:
    try:
        return await stream.receive_some(65536) == b""
    except trio.BrokenResourceError:
        return True


async def test_many_requests_on_one_connection_each_answered_whole(
    state_dir: Path, clock: ManualClock, nursery: trio.Nursery
) -> None:
    harness = await start_control_plane(nursery, state_dir, clock)
    stream = await _connect(harness)
    for _ in range(50):
        await stream.send_all(HEALTHZ)
        head, body = await _read_response(stream)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(body) == {"status": "ok"}
    # No software banner for a scanner to match against known bugs.
    assert b"\r\nserver:" not in head.lower(), head
    await stream.aclose()
    harness.cp.stop()


async def test_idle_connection_closed_after_keep_alive_timeout_but_not_while_in_use(
    state_dir: Path, clock: ManualClock, nursery: trio.Nursery
) -> None:
    harness = await start_control_plane(nursery, state_dir, clock, keep_alive_timeout=timedelta(seconds=0.5))
    stream = await _connect(harness)
    # Requests more often than the timeout, for three timeouts' worth: the timer is
    # re-armed after each response, so the connection stays open throughout.
    with trio.fail_after(10):
        for _ in range(10):
            await stream.send_all(HEALTHZ)
            head, _ = await _read_response(stream)
            assert head.startswith(b"HTTP/1.1 200 ")
            await trio.sleep(0.15)
    # Then idle: the server closes it, well before the test's own bound.
    idle_from = trio.current_time()
    with trio.fail_after(10):
        assert await _closed_by_server(stream)
    assert trio.current_time() - idle_from >= 0.3
    harness.cp.stop()


async def test_stop_closes_idle_kept_alive_connections_at_once(state_dir: Path, clock: ManualClock) -> None:
    async with trio.open_nursery() as nursery:
        # A long keep-alive: only the shutdown can close this connection quickly.
        harness = await start_control_plane(nursery, state_dir, clock, keep_alive_timeout=timedelta(hours=1))
        stream = await _connect(harness)
        await stream.send_all(HEALTHZ)
        await _read_response(stream)
        harness.cp.stop()
        with trio.fail_after(5):
            assert await _closed_by_server(stream)
    # Leaving the nursery means `run` returned: nothing of the control plane is left running.


async def test_plain_http_and_foreign_clients_fail_the_handshake_and_the_server_keeps_serving(
    state_dir: Path, clock: ManualClock, nursery: trio.Nursery
) -> None:
    harness = await start_control_plane(nursery, state_dir, clock)
    host, port = harness.address.rsplit(":", 1)
    plain = await trio.open_tcp_stream(host, int(port))
    await plain.send_all(HEALTHZ)
    # No HTTP answer to plaintext: the TLS handshake fails and the connection is closed.
    with trio.fail_after(5):
        assert await _closed_by_server(plain)
    await plain.aclose()
    # A client that trusts nothing of ours gives up in its own handshake.
    foreign = ssl.create_default_context()
    tcp = await trio.open_tcp_stream(host, int(port))
    bad = trio.SSLStream(tcp, foreign, server_hostname=host)
    try:
        await bad.do_handshake()
        raise AssertionError("a client with no trust in our CA completed a handshake")
    except trio.BrokenResourceError:
        pass
    # The listener is unharmed: a good client is served.
    stream = await _connect(harness)
    await stream.send_all(HEALTHZ)
    head, _ = await _read_response(stream)
    assert head.startswith(b"HTTP/1.1 200 ")
    await stream.aclose()
    harness.cp.stop()


async def test_a_request_body_sent_in_pieces_is_read_whole(
    state_dir: Path, clock: ManualClock, nursery: trio.Nursery
) -> None:
    # The app waits for each piece (the request's inbox is empty between them) and the
    # join succeeds only if every piece arrived, in order.
    harness = await start_control_plane(nursery, state_dir, clock)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    body = json.dumps(
        {
            "token": await harness.token("spiffe://example.org/ns/pieces"),
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        }
    ).encode()
    stream = await _connect(harness)
    await stream.send_all(
        b"POST /v1/join HTTP/1.1\r\nhost: cp\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    third = len(body) // 3
    for piece in (body[:third], body[third : 2 * third], body[2 * third :]):
        await trio.sleep(0.1)
        await stream.send_all(piece)
    with trio.fail_after(10):
        head, answer = await _read_response(stream)
    assert head.startswith(b"HTTP/1.1 200 "), (head, answer)
    assert json.loads(answer)["spiffe_id"] == "spiffe://example.org/ns/pieces"
    await stream.aclose()
    harness.cp.stop()


async def test_pipelined_requests_answered_in_order_to_a_client_that_reads_late(
    state_dir: Path, clock: ManualClock, nursery: trio.Nursery
) -> None:
    # A small receive buffer and no reading for a while: the server's socket fills and its
    # writes must wait (the path a fast write skips), and still nothing is lost or reordered.
    harness = await start_control_plane(nursery, state_dir, clock)
    host, port = harness.address.rsplit(":", 1)
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    stream = trio.SSLStream(trio.SocketStream(sock), harness.verified_context(), server_hostname=host)
    await stream.do_handshake()
    count = 200
    bundle_request = b"GET /v1/bundle.pem HTTP/1.1\r\nhost: cp\r\n\r\n"
    requests = b"".join(bundle_request if i % 2 else HEALTHZ for i in range(count))
    await stream.send_all(requests)
    await trio.sleep(1.0)
    expected_bundle = harness.cp.issuer.ca.bundle().to_pem() if harness.cp.issuer else b""
    with trio.fail_after(20):
        for i in range(count):
            head, body = await _read_response(stream)
            assert head.startswith(b"HTTP/1.1 200 "), (i, head)
            if i % 2:
                assert body == expected_bundle, i
            else:
                assert json.loads(body) == {"status": "ok"}, i
    await stream.aclose()
    harness.cp.stop()
