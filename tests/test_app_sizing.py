"""Honest sizing (issue 14): the Engine tab and the first-run dialog quote the one memory estimator on the model that
will actually run (Model = Auto with nothing downloaded runs the tiny one), the Engine tab's figure is `sdv2
doctor`'s for the same settings, and a machine without a GPU is told so and steered to the tiny demo on the CPU."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")
import torch
from sdv2_studio.app.engine_settings import EngineSettingsPanel
from sdv2_studio.app.services import GpuInfo
from sdv2_studio.app.settings import Settings
from sdv2_studio.engine import doctor
from sdv2_studio.engine.config import Controls
from sdv2_studio.engine.memory import GiB, estimate
from sdv2_studio.engine.models import resolve_model


def shown_gb(panel: EngineSettingsPanel) -> float:
    return float(panel.estimate.text().split()[0].lstrip("~"))


@pytest.mark.parametrize("settings", [
    Settings(),  # Model = Auto, nothing downloaded: the tiny model, on the CPU
    Settings(width=832, height=480, batch=False, dtype="bfloat16", controls=Controls(steps=3)),
    Settings(model="random:wan2.1-1.3b", device="cuda:0", gpus=2, text_on_gpu=True, width=832, height=480),
])
def test_engine_tab_figure_is_doctors_estimate_for_the_same_settings(qtbot, monkeypatch, settings):
    gpus = [GpuInfo(0, "GPU A", 24 * GiB), GpuInfo(1, "GPU B", 24 * GiB)] if settings.device.startswith("cuda") else []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(gpus))
    panel = EngineSettingsPanel()
    qtbot.addWidget(panel)
    panel.setGpus(gpus, 64 * GiB)
    panel.setSettings(settings)
    model, est = doctor.memory_estimate(settings.model, (settings.height, settings.width), device=settings.device,
                                        dtype=settings.dtype, steps=(settings.controls or Controls()).steps,
                                        batch=settings.batch, gpus=settings.gpus, text_on_gpu=settings.text_on_gpu)
    assert panel.resolved_model() == model and panel.estimate_now() == est
    assert shown_gb(panel) == pytest.approx(est.total / GiB, abs=0.05)
    assert panel.estimate.toolTip() == est.breakdown()


def test_auto_with_nothing_downloaded_is_sized_as_the_tiny_model(qtbot, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    panel = EngineSettingsPanel()
    qtbot.addWidget(panel)
    panel.setSettings(Settings(model="auto", width=512, height=512))
    tiny = resolve_model("tiny")
    assert panel.resolved_model().config == tiny.config
    real = estimate(resolve_model("random:wan2.1-1.3b").config, (512, 512), dtype="float32", gpu=False)
    assert panel.estimate_now().total < real.total / 10  # not the 1.3B model's figure
    assert panel.estimate.text().endswith("GB RAM")


def test_no_gpu_is_said_and_the_tiny_demo_on_the_cpu_is_recommended(qtbot, monkeypatch):
    from sdv2_studio.app import services
    from sdv2_studio.app.first_run import FirstRunDialog
    from test_app_window import FakeModels

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert services.gpus() == []
    panel = EngineSettingsPanel()
    qtbot.addWidget(panel)
    panel.setGpus(services.gpus(), services.system_memory())
    panel.setSettings(Settings(gpus=1))
    assert panel.gpus.text() == "no GPU: CPU" and not panel.gpus.isEnabled()
    assert panel.device.itemText(0) == "Auto (no GPU: CPU)" and panel.capacity()[1] == "RAM"
    panel.setGpus([GpuInfo(0, "GPU A", 24 * GiB)], None)  # a GPU appears: a count again, never the special text
    assert panel.gpus.text() == "1 GPU" and panel.capacity() == (24 * GiB, "VRAM")

    dlg = FirstRunDialog(FakeModels())  # the default probe: services.gpus, which asks torch
    qtbot.addWidget(dlg)
    qtbot.waitUntil(lambda: "none found" in dlg.real_title.text(), timeout=10_000)
    assert "recommended on this computer (no GPU: CPU)" in dlg.tiny_title.text()
    assert dlg.tiny_btn.property("kind") == "primary" and dlg.tiny_btn.isDefault()
    _tiny, est = doctor.memory_estimate("tiny", device="cpu")
    texts = " ".join(lab.text() for lab in dlg.findChildren(type(dlg.size_label)))
    assert f"about {est.total / GiB:.1f} GB of RAM" in texts  # the tiny demo's figure, from the one estimator
    assert f"about {doctor.vram_needs()[1]} GB of VRAM" in texts  # the real model's, as doctor quotes it


def test_doctor_memory_line_is_the_model_auto_runs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    [check] = doctor.check_memory()
    model, est = doctor.memory_estimate()
    assert model.untrained and check.status == doctor.OK  # nothing downloaded: the tiny demo, which fits
    assert "no GPU: CPU" in check.detail and est.breakdown() in check.detail and model.name in check.detail
    monkeypatch.setattr(doctor, "memory_estimate", lambda: (_ for _ in ()).throw(
        doctor.EngineError("model.pt is not a checkpoint")))
    [broken] = doctor.check_memory()
    assert broken.status == doctor.WARN and "not a checkpoint" in broken.detail and "sdv2 models download" in broken.fix
