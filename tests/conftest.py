"""Hermetic test setup: no hub access, a throwaway Prefect home, one Prefect harness."""

import os
import sys
import tempfile
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

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def prefect():
    """A real Prefect API for flow runs, shared by the whole session (it costs ~10 s)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # 30 s (Prefect's default) is not always enough for the server to start on a loaded 2-core VM.
    with prefect_test_harness(server_startup_timeout=180), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
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
