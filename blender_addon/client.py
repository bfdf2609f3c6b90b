"""HTTP client of the SafeMotion server (the /v1 API), with requests and numpy only: no bpy, testable anywhere.

Every failure (connection refused, timeout, an HTTP error status, a body that is not JSON) becomes a BackendError
whose message is shown to the user as is: what failed and how to fix it, with the server's own explanation
(`{"detail": ...}`) when it sent one. Arrays travel as {"dtype", "shape", "data": base64 of little-endian bytes}.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import threading
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import requests

SETTINGS_HINT = "Preferences ▸ Add-ons ▸ SafeMotion"
RESULTS_PAGE = 16  # job items per results request
_DTYPES = {"float32": "<f4", "float64": "<f8", "int32": "<i4", "int64": "<i8"}


class BackendError(Exception):
    """A server request that failed; the message is for the user (what failed, how to fix it).

    `status` is the HTTP status when the server answered, else None (not reachable, timeout, bad URL).
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def is_loopback_host(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1); other hostnames count as remote."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_is_local(base_url: str) -> bool:
    """Whether a server URL points at this machine (a loopback host)."""
    return is_loopback_host(urlsplit(base_url).hostname or "")


def check_url(base_url: str) -> str:
    """The server URL without a trailing slash; anything but http(s)://host[:port][/path] raises BackendError."""
    url = base_url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as err:
        raise BackendError(f"SafeMotion server URL {base_url!r} is not valid ({err}); "
                           f"use e.g. http://127.0.0.1:8765 in {SETTINGS_HINT}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise BackendError(f"SafeMotion server URL {base_url!r} is not valid; use http://HOST:PORT "
                           f"(e.g. http://127.0.0.1:8765) in {SETTINGS_HINT}")
    return url


def _problem_text(detail: Any) -> str:
    """The server's error detail as one line: a message, or 'field: reason; ...' for invalid fields."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for problem in detail:
            if isinstance(problem, dict) and "reason" in problem:
                parts.append(f"{problem.get('field', 'body')}: {problem['reason']}")
            else:
                parts.append(str(problem))
        return "; ".join(parts)
    return str(detail)


class BackendClient:
    """One SafeMotion server: health, models, jobs (submit, status, results, cancel), generate and audit."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 10.0):
        self.base_url = check_url(base_url)
        self.timeout = float(timeout)
        self.session = requests.Session()
        self.session.trust_env = not self.is_local  # never send loopback traffic through a proxy
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    @property
    def is_local(self) -> bool:
        """Whether the server is on this machine (a loopback host): no internet access is needed."""
        return url_is_local(self.base_url)

    # ------------------------------------------------------------------------------------------ endpoints

    def health(self) -> dict:
        """GET /v1/health: status, version, model, device, auth mode and queue."""
        return self._request("GET", "/v1/health")

    def models(self) -> dict:
        """GET /v1/models: the served model and what it accepts (lengths, variations, policies)."""
        return self._request("GET", "/v1/models")

    def body_model(self) -> dict | None:
        """GET /v1/body-model: the template mesh, faces, skinning weights and rest joints; None when the server has
        no body model (404: started without --body-model, or older than the endpoint)."""
        try:
            return self._request("GET", "/v1/body-model")
        except BackendError as err:
            if err.status == 404:
                return None
            raise

    def submit(self, payload: dict) -> str:
        """POST /v1/jobs ({"items": [...], "policy", "model"}); returns the new job's id."""
        body = self._request("POST", "/v1/jobs", json=payload)
        if not isinstance(body.get("id"), str):
            raise BackendError(f"SafeMotion server at {self.base_url} accepted the job but sent no job id; "
                               "is the URL a SafeMotion server?")
        return body["id"]

    def job(self, job_id: str) -> dict:
        """GET /v1/jobs/{id}: status ("queued", "running", "done", "cancelled") and per-item progress."""
        return self._request("GET", f"/v1/jobs/{quote(job_id, safe='')}")

    def results(self, job_id: str) -> dict:
        """Every item of a job with the motions of the finished ones (all result pages, merged)."""
        items: list[dict] = []
        start: int | None = 0
        page: dict = {}
        while start is not None:
            page = self._request("GET", f"/v1/jobs/{quote(job_id, safe='')}/results",
                                 params={"start": start, "limit": RESULTS_PAGE})
            items += page.get("items", [])
            following = page.get("next_start")
            if following is not None and following <= start:
                raise BackendError(f"SafeMotion server at {self.base_url} sent a results page that does not "
                                   f"advance (start {start}, next {following})")
            start = following
        return {**page, "items": items, "next_start": None}

    def cancel(self, job_id: str) -> None:
        """DELETE /v1/jobs/{id}: drop the job's pending items (a job that already finished is left as is)."""
        try:
            self._request("DELETE", f"/v1/jobs/{quote(job_id, safe='')}")
        except BackendError as err:
            if err.status != 409:
                raise

    def generate(self, payload: dict) -> dict:
        """POST /v1/generate ({"prompt", "seconds", "seed", "variations", "policy"}): the motions, synchronously."""
        return self._request("POST", "/v1/generate", json=payload)

    def edit(self, payload: dict) -> dict:
        """POST /v1/edit ({"source": {"joints", "fps"}, "prompt", "frames" | "extend_seconds" | "between", ...}): the
        edited takes' motions, synchronously."""
        return self._request("POST", "/v1/edit", json=payload)

    def audit(self, payload: dict) -> dict:
        """POST /v1/audit ({"joints": array [T,22,3] Y-up metres, "fps"}): where the motion uses removed codes."""
        return self._request("POST", "/v1/audit", json=payload)

    def grants_allow(self) -> bool:
        """Whether this server lets this key use the `allow` policy: it lists the policy and the key is a safety
        admin's (only those may read GET /v1/audit-log; 401/403 mean no)."""
        policies = {p for model in self.models().get("models", []) for p in model.get("policies", [])}
        if "allow" not in policies:
            return False
        try:
            self._request("GET", "/v1/audit-log", params={"limit": 1})
        except BackendError as err:
            if err.status in (401, 403):
                return False
            raise
        return True

    # ------------------------------------------------------------------------------------------ transport

    def _request(self, method: str, path: str, json: dict | None = None, params: dict | None = None) -> dict:
        """Send one request and return its JSON object; every failure becomes a BackendError."""
        url = self.base_url + path
        where = f"SafeMotion server at {self.base_url}"
        try:
            response = self.session.request(method, url, json=json, params=params, timeout=self.timeout)
        except requests.Timeout:
            raise BackendError(f"{where} did not answer within {self.timeout:g} s ({method} {path}). It may be busy "
                               f"or still loading its model: try again, or raise the timeout in {SETTINGS_HINT}."
                               ) from None
        except requests.ConnectionError as err:
            reason = "connection refused" if "refused" in str(err).lower() else _root_cause(err)
            raise BackendError(f"{where} is not reachable: {reason}. Start it in {SETTINGS_HINT} or check the URL."
                               ) from None
        except requests.RequestException as err:
            raise BackendError(f"{where}: request {method} {path} failed: {_root_cause(err)}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise BackendError(self._status_message(response, body), status=response.status_code)
        if not isinstance(body, dict):
            raise BackendError(f"{where} answered {method} {path} with something that is not a JSON object "
                               f"(HTTP {response.status_code}); is the URL a SafeMotion server?",
                               status=response.status_code)
        return body

    def _status_message(self, response: requests.Response, body: Any) -> str:
        """User-facing text for an HTTP error status, with the server's detail and a fix."""
        status = response.status_code
        detail = _problem_text(body["detail"]) if isinstance(body, dict) and "detail" in body else (
            response.reason or "no explanation")
        where = f"SafeMotion server at {self.base_url}"
        if status == 401:
            return f"{where} refused the API key: {detail}. Set a valid key in {SETTINGS_HINT}."
        if status == 403:
            return f"{where} does not allow this: {detail}"
        if status == 404:
            return f"{where}: not found ({detail}). Check the URL, or start the generation again."
        if status == 413:
            return f"{where}: the request is too large ({detail})"
        if status == 422:
            return f"{where} refused the request: {detail}"
        if status == 429:
            retry = response.headers.get("Retry-After")
            wait = f" Try again in {retry} s." if retry else " Try again shortly."
            return f"{where} is busy: {detail}.{wait}"
        if status == 504:
            return f"{where} ran out of time: {detail}. Try fewer variations or a shorter duration."
        if status >= 500:
            return f"{where} failed (HTTP {status}): {detail}. See the server log."
        return f"{where} answered HTTP {status}: {detail}"


def _root_cause(err: BaseException) -> str:
    """The innermost reason of a requests exception, without the long urllib3 wrapper text."""
    while err.__context__ is not None and err.__context__ is not err:
        err = err.__context__
    text = str(err)
    return text.split("] ", 1)[-1] if text.startswith("[") else text


# ---------------------------------------------------------------------------------------------- arrays

def submit_job(client: BackendClient, payload: dict, cancelled: threading.Event) -> str:
    """Submit a job (on a request thread); one submitted after `cancelled` was set is dropped on the server again."""
    job_id = client.submit(payload)
    if cancelled.is_set():
        cancel_quietly(client, job_id)
    return job_id


def cancel_quietly(client: BackendClient, job_id: str) -> None:
    """Cancel a job on the server, best effort (on a request thread: a server that is gone or refuses changes
    nothing here)."""
    try:
        client.cancel(job_id)
    except BackendError:
        pass


def encode_array(array: np.ndarray, dtype: str = "float32") -> dict:
    """The wire form of an array: {"dtype", "shape", "data": base64 of little-endian bytes}."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported on the wire; use one of {', '.join(_DTYPES)}")
    data = np.ascontiguousarray(np.asarray(array), dtype=_DTYPES[dtype])
    return {"dtype": dtype, "shape": list(data.shape), "data": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(payload: Any, where: str = "array") -> np.ndarray:
    """The array of a wire payload (float64 for floats, int64 for ints); BackendError naming `where` if malformed."""
    if not isinstance(payload, dict) or payload.get("dtype") not in _DTYPES:
        found = payload.get("dtype") if isinstance(payload, dict) else payload
        raise BackendError(f"the server sent a malformed array for {where}: expected dtype one of "
                           f"{', '.join(_DTYPES)}, got {found!r}")
    shape = payload.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise BackendError(f"the server sent a malformed array for {where}: bad shape {shape!r}")
    try:
        raw = base64.b64decode(payload.get("data", ""), validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise BackendError(f"the server sent a malformed array for {where}: data is not base64") from None
    dtype = np.dtype(_DTYPES[payload["dtype"]])
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise BackendError(f"the server sent a malformed array for {where}: {len(raw)} bytes do not fit "
                           f"shape {shape} of {payload['dtype']}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return array.astype(np.float64) if dtype.kind == "f" else array.astype(np.int64)
