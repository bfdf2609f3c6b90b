"""Malformed input against every operation in the committed OpenAPI schema (hypothesis): no 500s, and every 422
names a field with a reason. Bodies mix values shaped by the schema (types, bounds ± 1, enums) with arbitrary JSON,
lone surrogates, control characters and raw bytes; path and query parameters get random text."""

from __future__ import annotations

import json
import string
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import build_tiny_lcr_model

from safemotion.motion import skeleton
from safemotion.motion.body_model import write_standin_smpl
from safemotion.serve.app import create_app
from safemotion.serve.auth import create_key
from safemotion.serve.encoding import encode_array
from safemotion.serve.openapi import SCHEMA_FILE
from safemotion.serve.settings import ServerSettings
from safemotion.serve.store import Store

SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
OPERATIONS = [(path, method) for path, operations in SCHEMA["paths"].items() for method in operations]
EXAMPLES = 40
ODD_STRINGS = ["", " ", "\x00", "walk\nrun", "\ud800", "\u202e", "a" * 301, "💃" * 10, "null", "0" * 32]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20)
    | st.sampled_from(ODD_STRINGS),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def resolve(schema: dict) -> dict:
    """A schema with its $ref followed."""
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = SCHEMA["components"]["schemas"][name]
    return schema


def shaped(schema: dict, depth: int = 0) -> st.SearchStrategy:
    """Values near what `schema` accepts (in-range, boundary ± 1, wrong type) or anything at all."""
    schema = resolve(schema)
    if "anyOf" in schema:
        typed = st.one_of([shaped(option, depth) for option in schema["anyOf"]])
    elif "enum" in schema or "const" in schema:
        typed = st.sampled_from(schema.get("enum", [schema.get("const")]) + ["unknown"])
    elif schema.get("type") == "string":
        typed = st.text(max_size=schema.get("maxLength", 40) + 2) | st.sampled_from(ODD_STRINGS)
    elif schema.get("type") == "integer":
        low, high = schema.get("minimum", -2**63), schema.get("maximum", 2**63)
        typed = st.integers(low - 1, min(high + 1, low + 10**6)) | st.sampled_from([low - 1, high, high + 1])
    elif schema.get("type") == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1e9))
        high = schema.get("maximum", 1e9)
        typed = st.floats(low - 1, high + 1) | st.floats()
    elif schema.get("type") == "boolean":
        typed = st.booleans()
    elif schema.get("type") == "array" and depth < 3:
        typed = st.lists(shaped(schema.get("items", {}), depth + 1), max_size=min(schema.get("maxItems", 4), 4))
    elif schema.get("type") == "object" and depth < 3:
        properties = schema.get("properties", {})
        typed = st.fixed_dictionaries({}, optional={name: shaped(value, depth + 1)
                                                    for name, value in properties.items()})
    else:
        typed = json_values
    return st.one_of(typed, typed, typed, json_values)


def walking_joints(frames: int = 30) -> np.ndarray:
    """A plausible moving body [frames, 22, 3] for audit requests."""
    wave = 0.05 * np.sin(np.linspace(0, 6, frames))[:, None, None] * np.arange(1, 23)[None, :, None] / 22
    return skeleton.rest_joints()[None] + wave


# A valid body per operation: the fuzzer also sends these with one field replaced or removed, to get past the first
# check and reach the model, the job store and the audit code.
VALID_BODIES = {
    ("/v1/generate", "post"): {"prompt": "a person walks", "seconds": 1.0},
    ("/v1/jobs", "post"): {"items": [{"prompt": "a person walks", "seconds": 1.0}]},
    ("/v1/audit", "post"): {"joints": encode_array(walking_joints()), "fps": 20.0},
    ("/v1/edit", "post"): {"source": {"joints": encode_array(walking_joints()), "fps": 20.0},
                           "prompt": "a person jumps", "frames": [[8, 16]]},
}


def near_valid(path: str, method: str, schema: dict) -> st.SearchStrategy:
    """The operation's valid body with one property replaced by a shaped value, or removed."""
    valid = VALID_BODIES[(path, method)]
    properties = resolve(schema).get("properties", {})
    replaced = st.sampled_from(sorted(properties)).flatmap(
        lambda name: shaped(properties[name]).map(lambda value: {**valid, name: value}))
    removed = st.sampled_from(sorted(valid)).map(lambda name: {k: v for k, v in valid.items() if k != name})
    return st.one_of(replaced, replaced, replaced, removed, st.just(valid), st.just(valid))


def body_strategy(path: str, method: str, operation: dict) -> st.SearchStrategy:
    """Raw request bodies: JSON of near-valid, shaped or arbitrary values, or bytes that are not JSON at all."""
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return st.just(b"")
    near = near_valid(path, method, content["schema"])
    values = st.one_of(near, near, near, near, shaped(content["schema"]), json_values)
    return st.one_of(values.map(lambda value: json.dumps(value).encode()), st.binary(max_size=64),
                     st.sampled_from([b"", b"{", b"[" * 5000, b'{"prompt": "a" ' * 3, b"\xff\xfe{}", b"1e999999"]))


def parameter_strategy(operation: dict, where: str, known: list[str]) -> st.SearchStrategy:
    """Values (text) for an operation's path or query parameters; `known` are ids of real jobs."""
    names = [p["name"] for p in operation.get("parameters", []) if p["in"] == where]
    texts = st.text(max_size=70) | st.text(string.hexdigits[:16], min_size=32, max_size=32) | st.sampled_from(
        ["0", "-1", "true", "2999-01-01T00:00:00Z", "1e308", "nan", "65", "1000", *known])
    if where == "path":
        return st.fixed_dictionaries({name: st.sampled_from(known) | texts for name in names})
    return st.fixed_dictionaries({}, optional={name: texts for name in names})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a tiny model with the stand-in body model, a safety-admin key (so every route is reachable) and
    one real job."""
    root = tmp_path_factory.mktemp("server_fuzz")
    model = build_tiny_lcr_model(root / "tiny-lcr")
    settings_ = ServerSettings(model=str(model), data_dir=root / "data", device="cpu", threads=1,
                               max_body_bytes=256 * 1024, body_model=write_standin_smpl(root / "standin_smpl.pkl"))
    key, _ = create_key(Store(settings_.database_url()), "fuzzer", "safety-admin")
    with TestClient(create_app(settings_), raise_server_exceptions=False) as client:
        job = client.post("/v1/jobs", json=VALID_BODIES[("/v1/jobs", "post")],
                          headers={"authorization": f"Bearer {key}"})
        assert job.status_code == 202
        yield client, key, job.json()["id"]


@pytest.mark.parametrize("path, method", OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_malformed_requests_never_cause_server_errors(server, path, method):
    client, admin_key, job_id = server
    fuzz_operation(client, admin_key, job_id, path, method, EXAMPLES)


def fuzz_operation(client, admin_key: str, job_id: str, path: str, method: str, examples: int) -> None:
    """`examples` malformed requests to one operation through `client` (TestClient or httpx.Client): no 500s,
    every 422 names its fields, and some requests reach the handler."""
    operation = SCHEMA["paths"][path][method]
    statuses: list[int] = []  # this call's own: the check below must not pass on another test's requests

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(path_values=parameter_strategy(operation, "path", [job_id]),
           query=parameter_strategy(operation, "query", [job_id]),
           body=body_strategy(path, method, operation),
           content_type=st.sampled_from(["application/json"] * 4 + ["text/plain", None]),
           key=st.sampled_from([admin_key] * 4 + [None, "smk_not-a-key", "\u00e9"]))
    def check(path_values, query, body, content_type, key):
        url = path.format(**{name: quote(value, safe="") for name, value in path_values.items()})
        headers = {} if content_type is None else {"content-type": content_type}
        if key is not None:
            headers["authorization"] = b"Bearer " + key.encode()  # raw UTF-8 bytes, as a careless client sends
        response = client.request(method.upper(), url, params=query, content=body or None, headers=headers)
        statuses.append(response.status_code)
        assert response.status_code < 500, (method, url, query, body[:200], response.text[:500])
        if response.status_code == 422:
            problems = response.json()["detail"]
            assert problems and all(p["field"] and p["reason"] for p in problems)

    check()
    # the fuzzer got past authentication and validation into the handler (409: cancelling the finished job)
    assert {200, 202, 409} & set(statuses), statuses
