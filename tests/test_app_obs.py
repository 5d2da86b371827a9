"""The app's OBS service against a real headless OBS (skipped without the `obs` binary and Xvfb): status,
source list, capturing a scene, creating the styled source, and `sdv2 doctor`'s OBS check."""

from __future__ import annotations

import time

import numpy as np
import pytest

headless = pytest.importorskip("sdv2_studio.obs_bridge.headless")
if headless.obs_binary() is None:
    pytest.skip("OBS Studio is not installed (apt-get install obs-studio xvfb)", allow_module_level=True)


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    instance = headless.HeadlessObs(tmp_path_factory.mktemp("obs"))
    instance.start()
    yield instance
    instance.stop()


def test_bridge_service_talks_to_a_real_obs(obs, monkeypatch):
    from sdv2_studio.app.services import BridgeObsService
    from sdv2_studio.obs_bridge import doctor as obs_doctor
    from sdv2_studio.obs_bridge.client import ObsClient

    s = obs.settings
    monkeypatch.setenv("SDV2_OBS_HOST", s.host)
    monkeypatch.setenv("SDV2_OBS_PORT", str(s.port))
    monkeypatch.setenv("SDV2_OBS_PASSWORD", s.password)
    svc = BridgeObsService()
    assert svc.address() == (s.host, s.port)
    assert svc.status().startswith("connected: OBS")
    sources = svc.list_sources()
    assert sources
    src = svc.open_source(sources[0], (64, 64), 10)
    try:
        frame, _ = next(iter(src))
    finally:
        src.close()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    out = svc.open_output((72, 128), 10)
    try:
        for i in range(5):
            out.write(np.full((72, 128, 3), 40 * i, np.uint8))
            time.sleep(0.05)
        client = ObsClient(s)
        client.connect()
        try:
            assert ("StreamDiffusionV2", "ffmpeg_source") in client.input_names()
        finally:
            client.close()
    finally:
        out.close()
    [check] = obs_doctor.check_obs()
    assert check.status == obs_doctor.OK and "OBS" in check.detail
