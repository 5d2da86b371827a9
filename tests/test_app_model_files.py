"""The Engine tab's model-file pickers under pytest-qt (offscreen): each picked file shows what `sdv2 inspect` says
about it, a file of the wrong kind is one line and is not kept, and the picks reach the settings and the
EngineConfig the app starts (files from test_models' builders: the real layouts at tiny size)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")
from sdv2_studio.app.engine_settings import EngineSettingsPanel
from sdv2_studio.app.settings import Settings, SettingsStore
from sdv2_studio.engine.api import EngineConfig
from test_models import model_files, model_root  # noqa: F401 - fixtures: the tiny model in every layout


def test_pick_every_model_file(qtbot, model_files, tmp_path):  # noqa: F811
    f = model_files
    panel = EngineSettingsPanel()
    qtbot.addWidget(panel)
    panel.setSettings(Settings())
    changes: list[dict] = []
    panel.settingsChanged.connect(changes.append)

    assert panel.dit_file.setPath(str(f["dit"]))
    assert panel.dit_file.summary.text().startswith("DiT: Wan2.1 text-to-video DiT, tiny · layout wan · ")
    assert "params · float32" in panel.dit_file.summary.text()

    assert not panel.vae_file.setPath(str(f["te"]))  # the wrong kind: one line, not kept
    assert panel.vae_file.summary.text().startswith("✗ this is a text encoder (umT5 text encoder (d_model 64")
    assert panel.vae_file.summary.text().endswith("not a VAE: pick the VAE file")
    assert panel.vae_file.path() == "" and "\n" not in panel.vae_file.summary.text()
    assert panel.vae_file.setPath(str(f["vae"]))
    assert panel.vae_file.summary.text().startswith("VAE: Wan2.1 video VAE (base_dim 16, z_dim 16) · layout wan")
    assert panel.text_file.setPath(str(f["te"]))
    assert panel.text_file.summary.text().startswith("text encoder: umT5 text encoder (d_model 64, 2 layers")
    assert "bfloat16" in panel.text_file.summary.text()
    assert not panel.tokenizer_file.setPath(str(f["vae"]))
    assert "is not a tokenizer" in panel.tokenizer_file.summary.text()
    assert panel.tokenizer_file.setPath(str(f["tokenizer"]))
    assert panel.tokenizer_file.summary.text() == "tokenizer folder (tokenizer.json)"

    assert not panel.lora_list.addLora(str(f["dit"]))
    assert panel.lora_list.error.text().startswith("✗ this is a DiT") and not panel.lora_list.rows
    assert panel.lora_list.addLora(str(f["lora"]), 0.5) and panel.lora_list.addLora(str(f["lora_small"]))
    assert panel.lora_list.error.text() == ""
    assert panel.lora_list.summaries()[0].startswith("LoRA: LoRA for a dim-128 DiT (tiny): 7 layers at rank 4 · "
                                                     "layout peft")
    panel.lora_list.removeLora(1)
    panel.lora_list.setStrength(0, 0.75)

    s = Settings()
    for c in changes:  # what MainWindow._update_settings does with the panel's changes
        for k, v in c.items():
            setattr(s, k, v)
    assert (s.model, s.vae, s.text_encoder, s.tokenizer) == (str(f["dit"]), str(f["vae"]), str(f["te"]),
                                                            str(f["tokenizer"]))
    assert s.loras == [f"{f['lora']}:0.75"]
    cfg = EngineConfig(model=s.model, **s.model_files())
    assert (cfg.vae, cfg.text_encoder, cfg.tokenizer, cfg.loras) == (str(f["vae"]), str(f["te"]),
                                                                     str(f["tokenizer"]), ((str(f["lora"]), 0.75),))
    model = cfg.resolve_model()
    assert (model.vae_file, model.text_file, model.loras) == (f["vae"], f["te"], ((str(f["lora"]), 0.75),))
    assert panel.resolved_model() == model  # the memory estimate is for these files

    store = SettingsStore(tmp_path / "settings.json")  # the picks survive a restart and show again
    store.save(s)
    loaded, notes = store.load()
    assert loaded == s and notes == []
    again = EngineSettingsPanel()
    qtbot.addWidget(again)
    again.setSettings(loaded)
    assert again.vae_file.path() == str(f["vae"]) and again.vae_file.summary.text().startswith("VAE: ")
    assert again.lora_list.loras() == [f"{f['lora']}:0.75"]

    panel.vae_file.setPath("")  # cleared: the model folder's own again
    panel.dit_file.setPath("")
    assert changes[-2] == {"vae": ""} and changes[-1] == {"model": "auto"}
    assert panel.model.currentData() == "auto"
