"""Test isolation: no test reads or writes the user's real config, cache, data or model folders; torch threads
pinned so that the suite keeps its pace on a busy 2-core machine."""

import os

import pytest
import torch

# One intra-op thread per process (tests and the `sdv2` processes they start), unless SDV2_TEST_THREADS says
# otherwise: torch's default (one per core) oversubscribes a 2-core runner as soon as anything else runs (the UI
# thread of the app tests, a second pipeline rank, another job), and the tiny model's ops are too small to gain from
# a second thread anyway.
THREADS = int(os.environ.get("SDV2_TEST_THREADS", "1"))
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)

# NDI (tests/test_ndi.py, and the `sdv2` processes tests start) finds and sends on loopback only, never on the
# machine's network: the NDI runtime reads this folder's ndi-config.v1.json when it first starts.
os.environ["NDI_CONFIG_DIR"] = os.path.join(os.path.dirname(__file__), "ndi")


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    for var in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("SDV2_MODELS", str(home / "models"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
