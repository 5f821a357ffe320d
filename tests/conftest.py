"""Shared fixtures: every test works in its own tmp_path, with no API key and no EXPROF_DB."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import pg_server
from exprof import hints
from exprof.cli import cli
from exprof.store.engine import Store, store_url
from fake_anthropic import FakeAnthropic

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first: spread over pytest-xdist's workers from the start, no worker
    is left alone with one at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("EXPROF_DB", raising=False)
    hints.use_store(None, None)  # the store the last CLI call named stays behind otherwise
    return tmp_path


@pytest.fixture
def sample_config(tmp_path) -> Path:
    """A copy of the shipped sample, so a test may edit or delete its files."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    shutil.copytree(REPO / "data", tmp_path / "data")
    return tmp_path / "configs" / "sample_experiment.yaml"


@pytest.fixture
def invoke():
    def run(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return run


@pytest.fixture(scope="session")
def postgres_admin():
    """A real PostgreSQL 15 for the session (tests/pg_server.py), or a skip with the
    reason; with CI=true a missing server fails, never skips."""
    reason = pg_server.unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    with pg_server.server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    """The store URL of each backend: the default SQLite file, or a fresh PG database."""
    if request.param == "sqlite":
        yield store_url(None, tmp_path / "runs")
        return
    admin = request.getfixturevalue("postgres_admin")
    url, name = pg_server.fresh_database(admin)
    yield url
    pg_server.drop_database(admin, name)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(store_url(None, tmp_path / "runs"), create=True)


def write_experiment(folder: Path, samples: list[dict], mocks: dict, **config) -> Path:
    """Write a dataset, its mock answers and a config into folder; return the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dialogues.json").write_text(json.dumps(samples), encoding="utf-8")
    (folder / "mock_responses.json").write_text(json.dumps(mocks), encoding="utf-8")
    settings = {
        "experiment_id": "exp",
        "model": "claude-3-opus",
        "max_tokens": 100,
        "temperature": 0.5,
        "dataset_path": "dialogues.json",
        **config,
    }
    path = folder / "config.yaml"
    path.write_text(json.dumps(settings), encoding="utf-8")  # JSON is YAML
    return path


def make_samples(n: int, facts: int = 2, refuse_every: int = 0, missing_every: int = 0):
    """n synthetic samples with mocks covering facts in a fixed pattern."""
    samples, mocks = [], {}
    for i in range(n):
        did = f"d{i:05d}"
        fact_list = [f"fact{i}-{k}" for k in range(facts)]
        samples.append(
            {
                "dialogue_id": did,
                "system": "sys",
                "user": f"question {i}",
                "required_facts": fact_list,
            }
        )
        covered = fact_list[: (i % (facts + 1))]
        text = "answer " + " ".join(covered)
        meta = {"model": "claude-3-opus", "token_count": 10 + i % 7}
        if refuse_every and i % refuse_every == 0:
            meta["type"] = "refusal"
        if not (missing_every and i % missing_every == 0):
            mocks[did] = {"completion": text, "metadata": meta}
    return samples, mocks


KEY = "sk-ant-api03-TESTKEY-do-not-leak-0123456789"


@pytest.fixture
def fake(monkeypatch):
    """Start fake Messages API servers (tests/fake_anthropic.py) the SDK will call."""

    def start(**settings):
        server = FakeAnthropic(**settings).__enter__()
        started.append(server)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        return server

    started: list[FakeAnthropic] = []
    yield start
    for server in started:
        server.__exit__()


def run_sql(db: Path, *statements: str) -> None:
    """Edit a SQLite store behind exprof's back, as a user with the sqlite3 shell would."""
    raw = sqlite3.connect(db)
    for statement in statements:
        raw.execute(statement)
    raw.commit()
    raw.close()


@pytest.fixture
def finished_run(tmp_path, invoke) -> tuple[Path, Path]:
    """A finished mock run of 20 samples, all answered: (its config, its store file)."""
    samples, mocks = make_samples(20)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    return config, tmp_path / "runs" / "exprof.db"


@pytest.fixture
def run_with_failures(tmp_path, invoke) -> tuple[Path, Path]:
    """A mock run of 20 samples of which 4 failed, so it can be resumed: (config, store file)."""
    samples, mocks = make_samples(20, missing_every=5)
    config = write_experiment(tmp_path / "e", samples, mocks)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 1
    return config, tmp_path / "runs" / "exprof.db"
