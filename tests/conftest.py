import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# GPU slots and the server registry of this test session alone: another session on the box (or the user's own run)
# holds its slots elsewhere, so neither waits for the other's model server (causal_kl.server's handover). Under
# pytest-xdist each worker gets a folder of its own below the session's (the workers inherit the controller's
# variable): two workers' runs never wait for each other's server either.
_RUNTIME = os.environ.get("CAUSAL_KL_RUNTIME_DIR") or tempfile.mkdtemp(prefix="causal-kl-tests-")
if os.environ.get("PYTEST_XDIST_WORKER"):
    _RUNTIME = os.path.join(_RUNTIME, os.environ["PYTEST_XDIST_WORKER"])
os.environ["CAUSAL_KL_RUNTIME_DIR"] = _RUNTIME

import fixtures  # noqa: E402


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory) -> Path:
    return fixtures.tiny_gemma3_text(tmp_path_factory.mktemp("gemma3") / "model")


@pytest.fixture(scope="session")
def gemma3_mm_dir(tmp_path_factory) -> Path:
    return fixtures.tiny_gemma3_multimodal(tmp_path_factory.mktemp("gemma3mm") / "model")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return fixtures.tiny_llama(tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory) -> Path:
    return fixtures.tiny_qwen2(tmp_path_factory.mktemp("qwen2") / "model")


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """A tiny save_pretrained folder per added family (Gemma-2, GPT-2, GPT-NeoX, Mistral with a window, Qwen3),
    built on first use."""
    built: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in built:
            built[model_type] = fixtures.FAMILY_BUILDERS[model_type](tmp_path_factory.mktemp(model_type) / "model")
        return built[model_type]

    return get


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> Path:
    return fixtures.write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.parquet")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache that both causal-kl (HF_HUB_CACHE) and SAELens' hf_hub_download (offline)
    read: lay an SAE's files out in it with fixtures.lay_out_hub_cache."""
    from huggingface_hub import constants

    path = tmp_path / "hub"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return path


SLOWEST_FIRST = ("test_slurm.py", "test_workflow_sweep.py", "test_kill_rerun.py", "test_workflow_repair.py",
                 "test_workflow_analysis.py", "test_workflow_routes.py", "test_e2e.py", "test_workflow_shards.py",
                 "test_workflow_points.py", "test_server.py", "test_families.py", "test_report.py",
                 "test_workflow_reruns.py", "test_production_path.py")
"""The test files that take longest (``--durations``, 2-core box), longest first. pytest-xdist (pyproject: ``-n 2
--dist loadfile``) hands each file whole to one worker in this order, so the long ones start first and the short
ones fill in around them; the rest keep pytest's order after them."""


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
