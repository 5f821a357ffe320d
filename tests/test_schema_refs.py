"""A JSON Schema metric resolves references inside its schema only: a remote `$ref` is
refused when the config is loaded, and no run, mock or live, ever fetches one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import write_experiment

SAMPLES = [
    {"dialogue_id": d, "system": "s", "user": "q", "required_facts": ["f"]} for d in ("a", "b")
]
MOCKS = {
    "a": {"completion": '{"name": "x", "tags": ["t"]}'},
    "b": {"completion": '{"name": 5, "tags": [1]}'},
}


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    """A schema server on 127.0.0.1 that counts every request made to it."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = json.dumps({"type": "string"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/schema+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def write(tmp_path: Path, schema: dict) -> Path:
    (tmp_path / "answer.schema.json").write_text(json.dumps(schema), encoding="utf-8")
    metric = {"name": "valid", "type": "json", "schema_path": "answer.schema.json"}
    return write_experiment(tmp_path, SAMPLES, MOCKS, metrics=["fact_coverage", metric])


def remote_schemas(url: str, tmp_path: Path) -> dict[str, tuple[dict, str]]:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text('{"type": "string"}', encoding="utf-8")
    return {
        "top": ({"$ref": f"{url}/s.json"}, f"{url}/s.json"),
        "nested": (
            {"properties": {"name": {"allOf": [{"$ref": f"{url}/name.json#/x"}]}}},
            f"{url}/name.json#/x",
        ),
        "items": ({"properties": {"tags": {"items": {"$ref": f"{url}/t.json"}}}}, f"{url}/t.json"),
        "id-relative": (
            {"$id": f"{url}/root.json", "properties": {"name": {"$ref": "name.json"}}},
            "name.json",
        ),
        "defs-chain": (
            {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": f"{url}/a.json"}}},
            f"{url}/a.json",
        ),
        "dynamic": ({"items": {"$dynamicRef": f"{url}/d.json#meta"}}, f"{url}/d.json#meta"),
        "https": ({"$ref": "https://127.0.0.1:9/s.json"}, "https://127.0.0.1:9/s.json"),
        "file-url": ({"$ref": elsewhere.as_uri()}, elsewhere.as_uri()),
        "relative-file": ({"$ref": "elsewhere.json"}, "elsewhere.json"),
    }


VARIANTS = ["top", "nested", "items", "id-relative", "defs-chain", "dynamic"]
VARIANTS += ["https", "file-url", "relative-file"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_remote_ref_is_refused_at_load_and_never_fetched(tmp_path, invoke, server, variant):
    url, hits = server
    schema, ref = remote_schemas(url, tmp_path)[variant]
    config = write(tmp_path, schema)
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"Error: {config}: metrics[1] (valid): {tmp_path / 'answer.schema.json'}: "
        f"{'$dynamicRef' if variant == 'dynamic' else '$ref'} {ref!r} is outside the schema; "
        "only references within it (such as '#/$defs/name') are resolved, and nothing is fetched"
    ]
    assert result.stdout == ""
    assert not (tmp_path / "runs").exists()  # nothing written
    assert hits == []


LOCAL = {
    "pointer": {
        "type": "object",
        "properties": {"name": {"$ref": "#/$defs/name"}},
        "$defs": {"name": {"type": "string"}},
    },
    "items": {
        "properties": {"tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}}},
        "$defs": {"tag": {"type": "string"}},
    },
    "embedded-id": {
        "$id": "http://127.0.0.1:9/root.json",
        "properties": {"name": {"$ref": "name.json"}},
        "$defs": {"name": {"$id": "name.json", "type": "string"}},
    },
    "anchor": {
        "properties": {"name": {"$ref": "#n"}},
        "$defs": {"name": {"$anchor": "n", "type": "string"}},
    },
    "meta-schema": {
        "properties": {"name": {"$ref": "https://json-schema.org/draft/2020-12/schema"}}
    },
}


@pytest.mark.parametrize("variant", list(LOCAL))
def test_local_refs_resolve_in_a_mock_run_with_no_request(tmp_path, invoke, server, variant):
    url, hits = server
    config = write(tmp_path, LOCAL[variant])
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "runs" / "exp" / "scores.jsonl").read_text("utf-8").splitlines()
    valid = {row["dialogue_id"]: row["valid"] for row in map(json.loads, lines)}
    # A name is a schema only as an object or a boolean: against the (bundled) meta-schema
    # neither answer's is; a reference that did not resolve would have given no value.
    expected = {"a": False, "b": False} if variant == "meta-schema" else {"a": True, "b": False}
    assert valid == expected
    assert hits == []


def test_a_ref_to_nothing_in_the_schema_is_refused(tmp_path, invoke):
    config = write(tmp_path, {"properties": {"name": {"$ref": "#/$defs/missing"}}})
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"Error: {config}: metrics[1] (valid): {tmp_path / 'answer.schema.json'}: "
        "$ref '#/$defs/missing' points to nothing in the schema"
    ]
    assert not (tmp_path / "runs").exists()
