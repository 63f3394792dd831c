"""Hermetic test setup: no hub access, a throwaway Prefect home, one Prefect harness, and a
real S3 server for the tests that run against object storage."""

import os
import sys
import tempfile
import uuid
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="distill-hf-"))
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="distill-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["TQDM_DISABLE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import yaml  # noqa: E402

import s3server  # noqa: E402
import tiny  # noqa: E402


@pytest.fixture(scope="session")
def prefect():
    """A real Prefect API for flow runs, shared by the whole session (it costs ~10 s)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # A loaded 2-core machine can need more than the default 30 s to start the server.
    with prefect_test_harness(server_startup_timeout=180), \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture
def project(tmp_path):
    """A corpus, two tiny teachers and a config writer in a temporary folder."""
    return Project(tmp_path)


class Project:
    def __init__(self, root: Path):
        self.root = root
        self.corpus = tiny.write_jsonl(root / "corpus.jsonl",
                                       [{"text": t} for t in tiny.sentences(120, seed=3)])
        tiny.classifier(root / "teacher-a", seed=1)
        tiny.classifier(root / "teacher-b", seed=2)
        self.cache = root / "cache"

    def config(self, name: str = "config.yaml", **overrides) -> Path:
        raw = {"cache": "cache",
               "corpus": {"path": "corpus.jsonl", "rows_per_shard": 50},
               "teachers": [{"name": "a", "model": "teacher-a", "max_length": 16, "batch_size": 8},
                            {"name": "b", "model": "teacher-b", "max_length": 16, "batch_size": 8}]}
        raw.update(overrides)
        path = self.root / name
        path.write_text(yaml.safe_dump(raw))
        return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS (`weed server -s3`) on loopback for the whole session (it starts in ~3 s)."""
    pytest.importorskip("s3fs", reason=s3server.INSTALL)
    if s3server.weed_binary() is None:
        pytest.skip(f"no `weed` binary: {s3server.INSTALL}")
    with s3server.seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_cache(s3_server, monkeypatch, tmp_path) -> str:
    """An empty cache location in the test bucket, reached the way a user reaches one: through
    the standard AWS_* variables (no AWS config files of this machine get in the way)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}/cache"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def cache_location(request, tmp_path) -> str:
    """Run a test on a local cache folder and on a real S3 bucket."""
    return str(tmp_path / "cache") if request.param == "local" else request.getfixturevalue("s3_cache")
