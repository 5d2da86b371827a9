"""`sdv2 doctor`: every check reports status, detail and a fix; nothing here needs a GPU, OBS or a camera."""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import threading
from types import SimpleNamespace

from sdv2_studio.engine import doctor
from sdv2_studio.engine.doctor import FAIL, OK, WARN, Check
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.obs_bridge import doctor as obs_doctor


def test_full_run_on_this_machine_prints_one_screen():
    checks = doctor.run_checks()
    names = [c.name for c in checks]
    for wanted in ("torch", "model files", "disk space", "video encoder", "OBS", "virtual camera", "desktop app"):
        assert wanted in names
    assert any(n.startswith("GPU") for n in names)
    assert all(c.status in (OK, WARN, FAIL) and c.detail for c in checks)
    assert all(c.fix for c in checks if c.status != OK)  # every problem says what to do
    report = doctor.format_report(checks)
    assert len(report.splitlines()) < 40 and "→" in report or all(c.status == OK for c in checks)
    if not doctor.check_torch()[0].detail.startswith("cannot"):
        assert checks[0].status == OK


def test_vram_advice_comes_from_the_memory_estimator(monkeypatch):
    import torch
    from sdv2_studio.engine.memory import GiB, reference

    min_gb, recommended_gb = doctor.vram_needs()
    assert recommended_gb == math.ceil(reference().total / GiB) and min_gb < recommended_gb
    sizes = [min_gb - 1, (min_gb + recommended_gb) / 2, recommended_gb + 1]
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(sizes))
    majors = [7, 8, 9]  # a T4-class GPU (7.5) has no native bf16; "auto" picks float16 there
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(
        name=f"GPU {sizes[i]} GB", total_memory=int(sizes[i] * GiB), major=majors[i], minor=5))
    checks = doctor.check_torch()
    assert [c.status for c in checks[1:]] == [FAIL, WARN, OK]
    assert "no native bf16: auto uses float16" in checks[1].detail
    assert checks[2].detail.endswith("compute 8.5, bf16") and checks[3].detail.endswith("compute 9.5, bf16")
    assert f"{recommended_gb}+ GB" in checks[1].fix and "512x512" in checks[2].fix


def test_models_missing_is_a_warning_naming_the_download_command():
    [models, disk] = doctor.check_models()
    assert models.status == WARN and "sdv2 models download" in models.fix
    assert disk.name == "disk space"


def test_obs_plugin_check_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    [c] = obs_doctor.check_plugin()
    if sys.platform.startswith("linux"):
        assert c.status == WARN and c.fix == "run `sdv2 obs install-plugin`, then restart OBS"
        module = tmp_path / "obs-studio" / "plugins" / "streamdiffusionv2" / "bin" / "64bit" / "streamdiffusionv2.so"
        module.parent.mkdir(parents=True)
        module.write_bytes(b"\x7fELF")
        [c] = obs_doctor.check_plugin()
        assert c.status == OK and str(module) in c.detail
    names = [c.name for c in doctor.run_checks()]  # registered as an extension of `sdv2 doctor`
    assert "OBS plugin" in names and "NDI" in names


def test_obs_unreachable_plain_tcp_and_broken_bridge(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    monkeypatch.setattr(obs_doctor, "_obs_address", lambda: ("127.0.0.1", free, None))
    [c] = obs_doctor.check_obs(timeout=1)
    assert c.status == WARN and "nothing answers" in c.detail and "WebSocket Server" in c.fix

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        monkeypatch.setattr(obs_doctor, "_obs_address", lambda: ("127.0.0.1", port, None))
        [c] = obs_doctor.check_obs(timeout=1)
        assert c.status == WARN and "settings file is unreadable" in c.detail and "sdv2 obs status" in c.fix

        def broken():
            raise EngineError("OBS rejected the password; set it with `sdv2 obs set-password`")

        monkeypatch.setattr(obs_doctor, "_obs_address", lambda: ("127.0.0.1", port, broken))
        [c] = obs_doctor.check_obs(timeout=1)
        assert c.status == FAIL and "password" in c.detail

        monkeypatch.setattr(obs_doctor, "_obs_address", lambda: ("127.0.0.1", port, lambda: "OBS 30.2"))
        [c] = obs_doctor.check_obs(timeout=1)
        assert c.status == OK and "OBS 30.2" in c.detail
    finally:
        stop.set()
        t.join(2)
        server.close()


def test_obs_address_comes_from_the_bridge_settings(monkeypatch):
    monkeypatch.setenv("SDV2_OBS_HOST", "127.0.0.9")
    monkeypatch.setenv("SDV2_OBS_PORT", "4999")
    host, port, connect = obs_doctor._obs_address()
    assert (host, port) == ("127.0.0.9", 4999) and connect is not None


def test_the_obs_check_is_registered_by_the_bridge_not_imported_by_the_engine(monkeypatch):
    """`doctor` finds the bridge's check through the entry point group; a broken extension is one warning line."""
    import importlib.metadata

    from sdv2_studio.engine import extensions

    found, problems = extensions.load(extensions.DOCTOR_GROUP)
    assert ("obs", obs_doctor.check_obs) in found and not problems

    class Broken:
        name, value = "zz-broken", "nowhere:check"

        def load(self):
            raise ImportError("No module named 'nowhere'")

    real = importlib.metadata.entry_points

    def entry_points(group):
        return [*real(group=group), Broken()] if group == extensions.DOCTOR_GROUP else real(group=group)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(obs_doctor, "_obs_address", lambda: ("127.0.0.1", 9, None))
    checks = doctor.run_checks()
    names = [c.name for c in checks]
    assert names[-2:] == ["OBS", "OBS plugin"]  # the bridge's checks, registered through entry points
    [warn] = [c for c in checks if c.name == "extensions"]
    assert warn.status == WARN and "zz-broken" in warn.detail and "nowhere" in warn.detail


def test_virtual_camera_devices_from_sysfs(tmp_path):
    for name, label in (("video0", "Integrated Camera"), ("video4", "Dummy video device (0x0000)"),
                        ("video5", "StreamDiffusionV2 v4l2loopback")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "name").write_text(label + "\n")
    found = doctor._v4l2loopback_devices(tmp_path)
    assert found == ["/dev/video4 (Dummy video device (0x0000))", "/dev/video5 (StreamDiffusionV2 v4l2loopback)"]
    assert doctor._v4l2loopback_devices(tmp_path / "missing") == []
    [c] = doctor.check_virtual_camera()
    assert c.name == "virtual camera" and (c.status == OK or c.fix)


def test_gui_check_flags_the_broken_pyside_release(monkeypatch):
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(doctor, "_version", lambda dist: "6.12.0")
    [c] = doctor.check_gui()
    if sys.version_info < (3, 12):
        assert c.status == FAIL and "<6.12" in c.fix
    monkeypatch.setattr(doctor, "_version", lambda dist: "6.11.3")
    assert doctor.check_gui()[0].status == OK
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name: None)
    [c] = doctor.check_gui()
    assert c.status == WARN and "[gui]" in c.fix


def test_low_latency_outputs_per_platform(monkeypatch):
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda mod: None)  # nothing installed
    for plat, name, elsewhere in (("win32", "Spout", "Syphon"), ("darwin", "Syphon", "Spout"),
                                  ("linux", None, "Spout/Syphon")):
        monkeypatch.setattr(doctor.sys, "platform", plat)
        checks = {c.name: c for c in doctor.check_low_latency_outputs()}
        assert set(checks) == {"NDI", elsewhere} | ({name} if name else set())
        assert checks["NDI"].status == WARN and checks["NDI"].fix == "pip install 'streamdiffusion-studio[ndi]'"
        assert checks[elsewhere].status == OK and "not used on this platform" in checks[elsewhere].detail
        if name:
            assert checks[name].status == WARN and checks[name].fix.startswith("pip install")


def test_a_crashing_check_is_reported_and_the_rest_run():
    def boom():
        raise RuntimeError("kaput")

    checks = doctor.run_checks((boom, lambda: [Check("fine", OK, "yes")]))
    assert [c.status for c in checks] == [FAIL, OK] and "kaput" in checks[0].detail


def test_cli_exit_status_and_json(monkeypatch, capsys):
    parser = argparse.ArgumentParser(prog="sdv2")
    doctor.register_cli(parser.add_subparsers(dest="command"))
    monkeypatch.setattr(doctor, "CHECKS", ())
    monkeypatch.setattr(doctor, "run_checks", lambda checks=None: [Check("a", OK, "fine"),
                                                                    Check("b", WARN, "meh", "do x")])
    args = parser.parse_args(["doctor"])
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert "→ do x" in out and "0 problem(s), 1 warning(s)" in out
    monkeypatch.setattr(doctor, "run_checks", lambda checks=None: [Check("c", FAIL, "bad", "fix y")])
    args = parser.parse_args(["doctor", "--json"])
    assert args.fn(args) == 1
    assert json.loads(capsys.readouterr().out) == [{"name": "c", "status": "fail", "detail": "bad", "fix": "fix y"}]
    assert doctor.main(["--json"]) == 1
