"""The control-plane HTTP API as a Starlette app: JSON in, JSON out, 4xx for every bad input.

Handlers only translate HTTP to `Issuer` calls and back. The caller's TLS client chain
comes from `PEER_CHAIN`, a context variable that `server.py` sets in the connection's
task before hypercorn starts; every request task of that connection inherits it.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Sequence
from typing import Any

import structlog
from cryptography import x509
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from trustmesh.control.errors import ApiError
from trustmesh.control.issuer import Issuer
from trustmesh.store import StoreUnavailable

log = structlog.get_logger(__name__)

# Every request body we accept is a CSR or a short list; 64 KiB is far above that and far
# below anything that could hurt memory.
MAX_BODY_BYTES = 64 * 1024
# An oversized body is still read (and dropped) up to this much before the 413 goes out:
# closing with unread input makes the kernel reset the connection, and the reset destroys
# the answer before the client reads it (found by fuzzing: a chunked 128 KiB upload saw a
# dropped connection, not a 413). Past this, the answer is given up for.
DISCARD_LIMIT_BYTES = 1024 * 1024

PEER_CHAIN: contextvars.ContextVar[tuple[x509.Certificate, ...]] = contextvars.ContextVar(
    "trustmesh_peer_chain", default=()
)


async def _json_body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise ApiError(400, "invalid_request", "Content-Length is not a number") from None
        if declared_n > DISCARD_LIMIT_BYTES:  # too large to read even to drop it: answer now
            raise ApiError(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received <= MAX_BODY_BYTES:
            body += chunk
        elif received > DISCARD_LIMIT_BYTES:
            break
    if received > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"request body over {MAX_BODY_BYTES} bytes")
    try:
        # Strict UTF-8 first: json.loads(bytes) lets encoded surrogates through ("surrogatepass").
        text = body.decode("utf-8")
        data = json.loads(text)
        if "\\u" in text:
            # A `\ud800` escape decodes to a lone surrogate, which every later .encode() refuses.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"request body is not JSON: {exc}") from None
    except RecursionError:
        # `[[[[…` a few thousand deep (well under 64 KiB) exhausts json's recursion limit.
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return data


def _str_field(data: dict[str, Any], name: str) -> str:
    if name not in data:
        raise ApiError(400, "missing_field", f"field {name!r} is required")
    value = data[name]
    if not isinstance(value, str) or not value:
        raise ApiError(400, "invalid_field", f"field {name!r} must be a non-empty string")
    return value


def build_app(issuer: Issuer, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI app for one issuer (one CA and store), plus routes of other services (policy)."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def join(request: Request) -> Response:
        data = await _json_body(request)
        token = _str_field(data, "token")
        csr = _str_field(data, "csr")
        return JSONResponse((await issuer.join(token, csr)).to_json())

    async def renew(request: Request) -> Response:
        chain = PEER_CHAIN.get()
        if not chain:
            raise ApiError(
                401, "unauthenticated", "renew needs the caller's current SVID as TLS client certificate"
            )
        data = await _json_body(request)
        csr = _str_field(data, "csr")
        return JSONResponse((await issuer.renew(chain, csr)).to_json())

    async def jwt_svid(request: Request) -> Response:
        chain = PEER_CHAIN.get()
        if not chain:
            raise ApiError(
                401, "unauthenticated", "jwt-svid needs the caller's SVID as TLS client certificate"
            )
        data = await _json_body(request)
        if "audience" not in data:
            raise ApiError(400, "missing_field", "field 'audience' is required")
        audience = data["audience"]
        if not isinstance(audience, list):
            raise ApiError(400, "invalid_field", "field 'audience' must be a list of strings")
        return JSONResponse({"token": await issuer.jwt_svid(chain, audience)})

    async def bundle_json(request: Request) -> Response:
        return Response(issuer.ca.bundle().to_spiffe_json(), media_type="application/json")

    async def bundle_pem(request: Request) -> Response:
        return Response(issuer.ca.bundle().to_pem(), media_type="application/x-pem-file")

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code)

    async def on_store_unavailable(request: Request, exc: Exception) -> Response:
        # Disk full, read-only state dir, database down: the request changed nothing; say so.
        return JSONResponse({"error": "store_unavailable", "detail": str(exc)}, status_code=503)

    async def on_bug(request: Request, exc: Exception) -> Response:
        # Only our own bugs reach here; every input problem is an ApiError. Log with the
        # traceback, answer in the same JSON shape.
        log.error("api_internal_error", path=request.url.path, error=type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": "internal", "detail": "internal server error"}, status_code=500)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/v1/join", join, methods=["POST"]),
            Route("/v1/renew", renew, methods=["POST"]),
            Route("/v1/jwt-svid", jwt_svid, methods=["POST"]),
            Route("/v1/bundle", bundle_json, methods=["GET"]),
            Route("/v1/bundle.pem", bundle_pem, methods=["GET"]),
            *extra_routes,
        ],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            StoreUnavailable: on_store_unavailable,
            Exception: on_bug,
        },
    )
