"""Outbound HTTP for warren agents in Python (wasi:http).

Build the agent against the world ``agent-http`` (``-w agent-http``): it is
``agent`` plus ``wasi:http/outgoing-handler``. A request reaches only the
origins the operator granted the agent (``[agents.NAME.http] allow``);
anything else raises ``HttpError`` with ``not_allowed`` set.
"""

import json
from typing import Any, Dict, Optional, Tuple

from componentize_py_types import Err
from wit_world.imports import outgoing_handler, streams
from wit_world.imports import wasi_http_types as http

__all__ = ["Response", "HttpError", "post_json", "send"]


class HttpError(Exception):
    """No response. ``not_allowed``: the host refused the origin;
    ``invalid``: the URL cannot be sent as given."""

    def __init__(self, message: str, not_allowed: bool = False, invalid: bool = False):
        super().__init__(message)
        self.not_allowed = not_allowed
        self.invalid = invalid

    def into_failure(self) -> Err:
        """The usual failure: a refusal or a bad URL will not get better by
        retrying (reject); trouble on the way might (retry)."""
        from warren_agent import reject, retry
        return (reject if self.not_allowed or self.invalid else retry)(str(self))


class Response:
    def __init__(self, status: int, body: bytes):
        self.status = status
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise HttpError(f"the response is not JSON: {e}")


def post_json(url: str, headers: Dict[str, str], body: Any) -> Response:
    """``POST url`` with a JSON body (``content-type: application/json`` added)."""
    all_headers = {"content-type": "application/json", **headers}
    return send("POST", url, all_headers, json.dumps(body).encode())


def send(method: str, url: str, headers: Dict[str, str], body: bytes = b"") -> Response:
    scheme, authority, path = _split(url)
    # The length is known: say it, rather than send the body chunked (some
    # gateways refuse chunked requests).
    framed = {"content-length", "transfer-encoding"}
    if body and not any(k.lower() in framed for k in headers):
        headers = {**headers, "content-length": str(len(body))}
    try:
        fields = http.Fields.from_list([(k, v.encode()) for k, v in headers.items()])
    except Err as e:
        raise HttpError(f"bad header: {type(e.value).__name__}", invalid=True)
    request = http.OutgoingRequest(fields)
    try:
        request.set_method(_method(method))
        request.set_scheme(scheme)
        request.set_authority(authority)
        request.set_path_with_query(path)
    except Err:
        raise HttpError(f"`{url}` cannot be sent as given", invalid=True)
    # The request goes out first and its body streams after it: the host
    # buffers little of a body that nothing is sending yet.
    outgoing = request.body()
    try:
        future = outgoing_handler.handle(request, None)
    except Err as e:
        raise _error(url, e.value)
    # A refused or failed request says why on its response.
    try:
        stream = outgoing.write()
        for i in range(0, len(body), 4096):  # at most 4096 bytes a call
            stream.blocking_write_and_flush(body[i:i + 4096])
        stream.__exit__(None, None, None)
    except Err as e:
        raise _response_error(url, future) or _failed(url, _stream_error(e.value))
    try:
        http.OutgoingBody.finish(outgoing, None)
    except Err as e:
        raise _response_error(url, future) or _error(url, e.value)
    response = _wait(url, future)
    status = response.status()
    incoming = response.consume()
    data = bytearray()
    reader = incoming.stream()
    while True:
        try:
            data += reader.blocking_read(64 << 10)
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise _failed(url, _stream_error(e.value))
    reader.__exit__(None, None, None)
    return Response(status, bytes(data))


def _wait(url: str, future: http.FutureIncomingResponse) -> http.IncomingResponse:
    while True:
        outer = future.get()  # Ok(Ok(response)) | Ok(Err(error-code)) | Err(()): taken twice
        if outer is not None:
            break
        future.subscribe().block()
    if isinstance(outer, Err):
        raise _failed(url, "the response was already taken")
    if isinstance(outer.value, Err):
        raise _error(url, outer.value.value)
    return outer.value.value


def _response_error(url: str, future: http.FutureIncomingResponse) -> Optional[HttpError]:
    """The request's own error, if it has already failed (a refusal does at once)."""
    future.subscribe().block()
    outer = future.get()
    if outer is None or isinstance(outer, Err) or not isinstance(outer.value, Err):
        return None
    return _error(url, outer.value.value)


def _split(url: str) -> Tuple[Any, str, str]:
    scheme, sep, rest = url.partition("://")
    schemes = {"http": http.Scheme_Http(), "https": http.Scheme_Https()}
    if not sep or scheme.lower() not in schemes:
        raise HttpError(f"`{url}` is not an http(s) URL", invalid=True)
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    if not authority:
        raise HttpError(f"`{url}` is not an http(s) URL", invalid=True)
    return schemes[scheme.lower()], authority, path


def _method(name: str) -> Any:
    known = {"GET": http.Method_Get, "POST": http.Method_Post, "PUT": http.Method_Put,
             "DELETE": http.Method_Delete, "PATCH": http.Method_Patch}
    return known[name]() if name in known else http.Method_Other(name)


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    end = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    return f"{scheme}://{rest[:end]}"


def _error(url: str, code: Any) -> HttpError:
    if isinstance(code, http.ErrorCode_HttpRequestDenied):
        return HttpError(f"request to {_origin(url)} not allowed (not on this agent's http allow-list)",
                         not_allowed=True)
    return _failed(url, _describe(code))


# The common error codes in words, with their WASI names (as the Rust SDK says them).
_DESCRIBED = {
    "HttpResponseBodySize": ("the response body is over this agent's limit", "HTTP-response-body-size"),
    "HttpResponseTimeout": ("no response within this agent's request deadline", "HTTP-response-timeout"),
    "ConnectionReadTimeout": ("no response within this agent's request deadline", "connection-read-timeout"),
    "ConnectionTimeout": ("could not connect in time", "connection-timeout"),
    "ConnectionRefused": ("connection refused", "connection-refused"),
    "ConnectionTerminated": ("the connection was closed", "connection-terminated"),
    "DnsError": ("the host name did not resolve", "DNS-error"),
    "TlsCertificateError": ("the server's certificate was not accepted", "TLS-certificate-error"),
}


def _describe(code: Any) -> str:
    name = type(code).__name__.replace("ErrorCode_", "")
    if name in _DESCRIBED:
        what, wasi = _DESCRIBED[name]
        return f"{what} ({wasi})"
    return name


def _failed(url: str, why: str) -> HttpError:
    return HttpError(f"request to {_origin(url)} failed: {why}")


def _stream_error(e: Any) -> str:
    if isinstance(e, streams.StreamError_LastOperationFailed):
        code = http.http_error_code(e.value)
        return _describe(code) if code is not None else e.value.to_debug_string()
    return "the connection closed"
