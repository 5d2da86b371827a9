"""The app's source and output pickers with the OBS plugin and the low-latency outputs (pytest-qt, offscreen, a real
tiny engine): "OBS filter · CHANNEL" as a source and the plugin's source as the styled output when the plugin is
installed, a disabled entry saying how to install it when not; NDI / Spout / Syphon switches only with their
availability, and an NDI switch that streams through the same opener as `sdv2 run --out ndi`."""

from __future__ import annotations

import os
import sys
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt
from sdv2_studio.app.output_panel import VIA_MEDIA, VIA_PLUGIN
from sdv2_studio.engine.io.availability import NDI_INSTALL, Availability
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.io.shm import ShmFrameSink, segment_name
from sdv2_studio.engine.models import tiny_bundle
from sdv2_studio.obs_bridge.native_plugin import INSTALL_HINT, plugin_status
from test_app_window import FakeObs, make_window, start, stop

NOT_INSTALLED = Availability(False, "the StreamDiffusionV2 OBS plugin is not installed", INSTALL_HINT)
INSTALLED = Availability(True, "the StreamDiffusionV2 OBS plugin is installed (/x/streamdiffusionv2.so)")
NO_NDI = {"spout": Availability(False, "Spout exists on Windows only", "use NDI or the OBS plugin here"),
          "syphon": Availability(False, "Syphon exists on macOS only", "use NDI or the OBS plugin here"),
          "ndi": Availability(False, "NDI output needs cyndilib (its wheel brings the NDI runtime)", NDI_INSTALL)}


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def window(qtbot, tmp_path, bundle, plugin=NOT_INSTALLED, outputs=NO_NDI, **overrides):
    return make_window(qtbot, tmp_path, bundle, plugin_probe=lambda: plugin, outputs_probe=lambda: outputs,
                       **overrides)


def items(combo) -> dict:
    return {combo.itemData(i): (combo.itemText(i), combo.model().item(i).isEnabled(),
                                combo.itemData(i, Qt.ToolTipRole)) for i in range(combo.count())}


def test_plugin_status_follows_the_installed_module(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the plugin is found in OBS's Linux plugin folder")
    status = plugin_status(tmp_path)
    assert status.ok is False and status.fix == INSTALL_HINT
    module = tmp_path / "streamdiffusionv2" / "bin" / "64bit" / "streamdiffusionv2.so"
    module.parent.mkdir(parents=True)
    module.write_bytes(b"\x7fELF")
    assert plugin_status(tmp_path).ok is True


def test_without_the_plugin_its_entries_are_disabled_and_say_how_to_install(qtbot, tmp_path, bundle):
    w = window(qtbot, tmp_path, bundle)
    qtbot.waitUntil(lambda: "__no_plugin__" in items(w.source_picker.combo), timeout=10_000)
    text, enabled, tip = items(w.source_picker.combo)["__no_plugin__"]
    assert text == "OBS filter · plugin not installed" and not enabled and "sdv2 obs install-plugin" in tip
    assert not any(str(spec).startswith("obs-filter:") for spec in items(w.source_picker.combo))
    via = w.output_panel.obs_via
    assert not via.model().item(via.findData(VIA_PLUGIN)).isEnabled()
    assert via.currentData() == VIA_MEDIA  # the websocket/UDP path stays the no-install fallback
    assert "sdv2 obs install-plugin" in w.output_panel.plugin_status.text()
    w.close()


def test_with_the_plugin_its_filter_is_a_source_and_its_source_the_styled_output(qtbot, tmp_path, bundle):
    channel = f"app{os.getpid() % 100000}"
    obs = FakeObs()
    w = window(qtbot, tmp_path, bundle, plugin=INSTALLED, obs=obs, obs_channel=channel, output_obs=True)
    qtbot.waitUntil(lambda: f"obs-filter:{channel}" in items(w.source_picker.combo), timeout=10_000)
    assert "obs-filter:main" in items(w.source_picker.combo) and "__no_plugin__" not in items(w.source_picker.combo)
    via = w.output_panel.obs_via
    assert via.model().item(via.findData(VIA_PLUGIN)).isEnabled() and "✓" in w.output_panel.plugin_status.text()
    via.setCurrentIndex(via.findData(VIA_PLUGIN))
    via.activated.emit(via.currentIndex())
    assert w.settings.obs_plugin and w.request().outputs.obs_plugin_channel == channel

    # an OBS filter writing frames into the channel (what the plugin's filter does); the app streams from it
    writer = ShmFrameSink(segment_name(channel, "cap"), fps=16)
    pattern, stop_writing = TestPatternSource((72, 128), fps=16, realtime=True), threading.Event()

    def feed():
        for frame, _ in pattern:
            if stop_writing.is_set():
                return
            writer.write(frame)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        i = w.source_picker.combo.findData(f"obs-filter:{channel}")
        w.source_picker.combo.setCurrentIndex(i)
        w.source_picker.combo.activated.emit(i)
        assert w.settings.source == f"obs-filter:{channel}" and w.settings.recent_files == []
        assert w.input_view._badge == f"OBS filter · {channel}"
        start(qtbot, w)
        qtbot.waitUntil(lambda: w.styled_view.frames_shown >= 2, timeout=60_000)
        qtbot.waitUntil(lambda: len(obs.frames) >= 2, timeout=30_000)
        assert obs.plugin_channels == [channel]  # the styled output went to the plugin's source
        stop(qtbot, w)
    finally:
        stop_writing.set()
        feeder.join(5)
        pattern.close()
        writer.close()
    w.close()


def test_low_latency_switches_show_only_with_their_availability(qtbot, tmp_path, bundle):
    w = window(qtbot, tmp_path, bundle)
    ndi = w.outputs.buttons["ndi"]
    qtbot.waitUntil(lambda: "pip install" in ndi.toolTip(), timeout=10_000)
    assert not ndi.isEnabled() and NDI_INSTALL in ndi.toolTip()
    if sys.platform.startswith("linux"):
        assert ndi.isVisibleTo(w) and not w.outputs.buttons["spout"].isVisibleTo(w)
        assert not w.outputs.buttons["syphon"].isVisibleTo(w)
    listed = w.output_panel.low_latency.text()
    assert "✗ NDI: NDI output needs cyndilib" in listed and "✗ Spout: Spout exists on Windows only" in listed
    ndi.click()  # disabled: cannot be armed
    assert not w.outputs.outputs().ndi
    w.close()


def test_the_ndi_switch_streams_through_the_cli_opener(qtbot, tmp_path, bundle):
    cyndilib = pytest.importorskip("cyndilib", reason=f"NDI needs the [ndi] extra ({NDI_INSTALL})")
    from sdv2_studio.engine.io.availability import low_latency_outputs
    from test_ndi import receive

    assert cyndilib is not None
    w = window(qtbot, tmp_path, bundle, outputs=low_latency_outputs())
    ndi = w.outputs.buttons["ndi"]
    qtbot.waitUntil(ndi.isEnabled, timeout=10_000)
    ndi.click()
    assert w.outputs.outputs().ndi and w.settings.output_ndi
    start(qtbot, w)
    rgb, _rate = receive("StreamDiffusionV2", timeout=120)
    assert rgb.shape == (72, 128, 3)  # the styled frames at the source's size
    assert any(o.name == "ndi" and not o.error for o in w.controller.worker.session.status().outputs)
    stop(qtbot, w)
    w.close()
