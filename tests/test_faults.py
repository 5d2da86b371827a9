"""Fault injection (issue 12): hostile or unlucky input through the real boundary, grouped by class. Every case
expects one clear line (exit status 2 from the CLI, an EngineError/ValueError from the API, a 4xx from the control
API), no traceback, no endless wait, and nothing the user made lost.

Cases that live with their feature are not repeated here; they count for their class:

* CLI flags: test_cli.py::test_bad_input_is_one_line_not_a_traceback (missing file, steps, size, model path).
* Files, checkpoints, videos: test_cli.py::test_bad_checkpoint_through_the_console_script,
  test_checkpoint.py::test_bad_input / test_identify_rejects_other_files (malicious and broken pickles),
  test_io.py::test_source_errors_are_one_line, test_io.py::test_cli_file_run_keeps_the_inputs_duration_and_frame_times
  and test_odd_time_bases_keep_every_frames_time_through_source_and_sink (time is data),
  test_cli.py::test_source_dying_mid_stream_keeps_the_output.
* Settings, presets, caches: test_app_settings.py::test_corrupt_file_is_backed_up_and_reported,
  test_presets.py::test_bad_field_names_file_and_field_and_others_still_load and
  test_corrupt_user_file_is_backed_up_and_reported_shipped_one_only_reported,
  test_text.py::test_corrupted_cache_file_is_recomputed.
* Network and hub: test_hub.py::test_unsafe_names_from_the_hub_touch_nothing, test_silent_hub_is_one_line_after_the_
  deadline, test_stalled_transfer_is_one_line_after_the_deadline, test_disk_full_while_writing_is_one_line.
* Control API: test_obs_control.py (bad Content-Length, short bodies, idle, dripping and surplus connections).
* Engine API: test_controls.py::test_a_wrong_type_or_value_is_one_line_naming_the_field,
  test_api.py::test_bad_config_is_one_clear_line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import refused, wait_for
from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.cli import main
from sdv2_studio.engine.config import InvalidControl
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.pattern import TestPatternSource
from sdv2_studio.engine.io.sinks import MP4Sink, open_sink
from sdv2_studio.engine.io.sources import AVSource
from sdv2_studio.engine.models import tiny_bundle

SDV2 = [sys.executable, "-m", "sdv2_studio.engine.cli"]
RUN = ["run", "--model", "tiny", "--size", "64x64", "--steps", "1"]


def clip(path: Path, frames: int = 8, size: tuple[int, int] = (64, 64)) -> Path:
    with MP4Sink(path, fps=16) as sink:
        for frame, _ in TestPatternSource(size, fps=16, frames=frames):
            sink.write(frame)
    return path


def frames_in(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# ---------------------------------------------------------------- CLI flags


@pytest.mark.parametrize("flags, words", [
    (["--device", "cdua:0"], "unknown --device"),
    (["--device", "gpu"], "unknown --device"),
    (["--ranks", "0"], "--ranks must be 1 or more"),
    (["--latency-budget", "-1"], "--latency-budget must be a positive number"),
    (["--target-fps", "nan"], "--target-fps must be a positive number"),
    (["--frames", "-3"], "must be positive"),
    (["--seconds", "nan"], "must be positive"),
    (["--size", "100000x100000"], "too large"),
    (["--source", "test:100000x100000"], "larger than 8192"),
    (["--source", "test:8x8"], "too small"),
    (["--source", "nosuch.mp4"], "no such video file: nosuch.mp4"),
    (["--source", "test:64x64@x"], "bad test source"),
    (["--out", "styled.avi"], "unsupported output 'styled.avi'"),
    (["--size", "65x64"], "not a multiple of 16"),
    (["--steps", "abc"], "invalid int value: 'abc'"),
    (["--lora", f"{__file__}:abc"], "LoRA strength 'abc' is not a number"),
    (["--out", f"{__file__}/styled.mp4"], "is a file, not a folder"),
    (["--seconsd", "1"], "unrecognized arguments: --seconsd 1 (see `sdv2 run --help`)"),
], ids=["device-typo", "device-unknown", "ranks-0", "latency-negative", "target-nan", "frames-negative",
        "seconds-nan", "size-huge", "source-huge", "source-tiny", "source-missing", "source-test-typo", "out-avi",
        "size-not-16", "argparse", "lora-strength", "out-under-a-file", "flag-typo"])
def test_cli_mistakes_are_one_line_before_the_model_loads(flags, words, capsys, monkeypatch):
    """A typo costs no model load (minutes with the real model): refused before anything loads, in one line
    (argparse's own errors too, without its usage block)."""
    from sdv2_studio.engine import api

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the mistake was refused")

    monkeypatch.setattr(api, "load_bundle", no_load)
    refused([*RUN, "--frames", "4", "--out", "", *flags], words, capsys)


def test_cli_cuda_device_list_without_those_gpus_is_refused_at_once(capsys):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    refused([*RUN, "--frames", "4", "--out", "", "--device", "cuda:0,1"], "not found", capsys)


def test_cli_out_vcam_is_accepted_as_readme_spells_it(capsys):
    """`--out vcam` reaches the virtual camera (which may be missing here: then that is the one line)."""
    code = main([*RUN, "--frames", "4", "--out", "vcam"])
    err = capsys.readouterr().err
    assert "unsupported output" not in err and "Traceback" not in err
    assert code == 0 or "virtual camera" in err.strip().splitlines()[-1]


# ---------------------------------------------------------------- files, checkpoints, videos


@pytest.mark.parametrize("link", ["same", "relative", "symlink", "hardlink"])
def test_cli_output_over_its_input_is_refused_and_the_input_kept(tmp_path, link, capsys, monkeypatch):
    video = clip(tmp_path / "in.mp4")
    before = video.read_bytes()
    out = {"same": video, "relative": Path("sub/../in.mp4"), "symlink": tmp_path / "link.mp4",
           "hardlink": tmp_path / "hard.mp4"}[link]
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    if link == "symlink":
        out.symlink_to(video)
    elif link == "hardlink":
        os.link(video, out)
    refused([*RUN, "--source", str(video), "--out", str(out)], "would destroy the input", capsys)
    assert video.read_bytes() == before


def test_cli_tiny_video_is_one_line_not_an_abort(tmp_path, capsys):
    path = tmp_path / "1x1.avi"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("rawvideo", rate=10)
        stream.width = stream.height = 1
        stream.pix_fmt = "rgb24"
        for i in range(3):
            c.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((1, 1, 3), i, np.uint8), format="rgb24")))
        c.mux(stream.encode(None))
    refused([*RUN, "--source", str(path), "--out", str(tmp_path / "o.mp4")], "too small to restyle", capsys)
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("content", [b"", b"hello, not a video\n", b"\x00\x00\x00\x18ftypmp42" + b"\xff" * 500],
                         ids=["empty", "text", "broken-header"])
def test_cli_not_a_video_is_one_line(tmp_path, content, capsys):
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    refused([*RUN, "--source", str(path), "--out", ""], "not a video FFmpeg can decode", capsys)


def test_cli_garbage_checkpoint_is_one_line(tmp_path, capsys):
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(4096))
    refused([*RUN, "--model", str(path), "--out", ""], str(path.name), capsys)


# ---------------------------------------------------------------- settings, presets, cache files


def test_preset_names_with_terminal_escapes_are_printed_harmless(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDV2_USER_PRESETS", str(tmp_path))
    (tmp_path / "evil\x1b[2J.toml").write_text('name = "\\u001b[31mRED\\u001b]0;owned\\u0007"\nprompt = "x"\n')
    assert main(["presets", "list"]) == 0
    out = capsys.readouterr()
    assert "RED" in out.out and "\x1b" not in out.out + out.err and "\x07" not in out.out + out.err


@pytest.mark.parametrize("content, words", [
    ('{"timeout": "soon"}', "OBS timeout"),
    ('{"timeout": 1e9}', "OBS timeout"),
    ('{"host": {"a": 1}}', "OBS host"),
    ('{"host": "obs\\u001b[2J"}', "OBS host"),
    ('{"port": 99999}', "out of range"),
    ('{"port": "http"}', "not a number"),
    ("[1, 2]", "JSON object"),
    ("{not json", "cannot read OBS settings"),
], ids=["timeout-text", "timeout-huge", "host-object", "host-escape", "port-range", "port-text", "not-object",
        "not-json"])
def test_obs_settings_file_with_bad_values_is_one_line(tmp_path, content, words):
    from sdv2_studio.obs_bridge.settings import load_settings

    path = tmp_path / "obs.json"
    path.write_text(content)
    with pytest.raises(EngineError, match=words) as e:
        load_settings(path, env={}, use_keyring=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("thumb", ["../secret.png", "/etc/passwd", "link.png", "notes.txt"],
                         ids=["parent", "absolute", "link-out", "not-a-picture"])
def test_preset_thumbnail_outside_its_folder_is_refused_and_never_copied(tmp_path, thumb):
    from sdv2_studio.engine.presets import import_preset

    (tmp_path / "secret.png").write_bytes(b"private")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "link.png").symlink_to(tmp_path / "secret.png")
    (tmp_path / "shared" / "notes.txt").write_text("private")
    src = tmp_path / "shared" / "evil.toml"
    src.write_text(f'name = "Evil"\nprompt = "x"\nthumbnail = "{thumb}"\n')
    mine = tmp_path / "mine"
    with pytest.raises(EngineError, match="field 'thumbnail' must name a picture"):
        import_preset(src, mine)
    assert not mine.exists() or list(mine.iterdir()) == []


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("flags, words", [(["--port", "70000"], "--port must be a TCP port (1-65535)"),
                                          (["--port", "0"], "--port must be a TCP port"),
                                          (["--samples", "0"], "--samples must be 1 or more")])
def test_bench_transport_flags_are_checked_before_it_looks_for_obs(flags, words, capsys):
    """`sdv2 bench transport` comes from the OBS bridge (an entry point of the bench group), its flags with it."""
    refused(["bench", "transport", *flags], words, capsys)


def test_cli_unreachable_stream_is_one_line(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    refused([*RUN, "--source", f"tcp://127.0.0.1:{port}", "--out", ""], "cannot connect", capsys)


def test_a_sender_that_never_sends_is_one_line_after_the_timeout():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        held = []
        threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
        with pytest.raises(EngineError, match="no answer from .* within 1 s"):
            AVSource(f"tcp://127.0.0.1:{server.getsockname()[1]}", timeout=1.0)
        for conn, _ in held:
            conn.close()


# ---------------------------------------------------------------- control API


@pytest.fixture
def control():
    from sdv2_studio.obs_bridge.control import ControlServer

    class Target:
        def status(self) -> dict:
            return {"state": "stopped"}

    srv = ControlServer(Target(), publish=False, idle_seconds=5.0).start()
    yield srv
    srv.stop()


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("data, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n", b"400"),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", b"431"),
    (b"GET /v1/status HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", b"431"),
], ids=["tls-hello", "long-request-line", "long-header", "many-headers"])
def test_control_api_garbage_gets_an_error_and_the_server_goes_on(control, data, status):
    from sdv2_studio.obs_bridge.control_client import ControlClient

    reply = _exchange(control.port, data)
    assert reply.split(b" ", 2)[1] == status, reply[:200]
    error = json.loads(reply.partition(b"\r\n\r\n")[2])["error"]  # one JSON line, not an HTML page
    assert error and "\n" not in error
    assert ControlClient(control.url, control.token).status() == {"state": "stopped"}


# ---------------------------------------------------------------- engine API


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


@pytest.fixture
def engine(bundle):
    eng = Engine(EngineConfig(model="tiny", size=(64, 64), prompt_cache_dir=""), bundle=bundle).start()
    yield eng
    eng.stop(timeout=60)


@pytest.mark.parametrize("frame, pts", [
    (np.zeros((0, 0, 3), np.uint8), None),
    (np.zeros((0, 64, 3), np.uint8), None),
    (np.zeros((64, 64, 3), np.float32), None),
    (np.zeros((64, 64, 4), np.uint8), None),
    ("frame.png", None),
    (np.zeros((64, 64, 3), np.uint8), float("nan")),
    (np.zeros((64, 64, 3), np.uint8), "0.5"),
], ids=["empty", "no-rows", "float", "rgba", "path", "pts-nan", "pts-text"])
def test_engine_push_refuses_bad_frames_at_the_call_and_keeps_streaming(engine, frame, pts):
    with pytest.raises(ValueError) as e:
        engine.push(frame, pts=pts)
    assert "\n" not in str(e.value)
    frames = [f for f, _ in TestPatternSource((48, 80), fps=16, frames=5)]
    for i, f in enumerate(frames):
        engine.push(f, pts=i / 16)
    engine.stop(timeout=120)  # the stream went on: it finishes every frame, each with its time
    got = [engine.pull_timed() for _ in frames]
    assert [g[0].shape for g in got] == [(48, 80, 3)] * 5 and [g[1] for g in got] == [i / 16 for i in range(5)]


@pytest.mark.parametrize("args, kwargs, error", [
    (({"steps": 2},), {}, EngineError),
    (("anime",), {}, EngineError),
    ((), {"steps": "2"}, InvalidControl),
    ((), {"noise_scale": float("inf")}, InvalidControl),
    ((), {"seed": -1}, InvalidControl),
    ((), {"prompt": "x" * 100_000}, InvalidControl),
    ((), {"stepz": 2}, EngineError),
], ids=["dict", "text", "steps-text", "noise-inf", "seed-negative", "prompt-huge", "unknown-field"])
def test_engine_set_controls_refuses_wrong_types_at_the_call(engine, args, kwargs, error):
    before = engine.config.controls
    with pytest.raises(error) as e:
        engine.set_controls(*args, **kwargs)
    assert "\n" not in str(e.value) and engine.config.controls == before


def test_engine_size_beyond_the_machine_is_one_line_before_allocating(bundle):
    with pytest.raises(EngineError, match="too large"):
        Engine(EngineConfig(model="tiny", size=(8192, 8192), prompt_cache_dir=""), bundle=bundle).start()


def test_open_sink_names_what_it_accepts(tmp_path):
    with pytest.raises(EngineError, match="unsupported output 'out.avi': use a .mp4 file path"):
        open_sink("out.avi", fps=16)
    with open_sink(str(tmp_path / "vcam.mp4"), fps=16) as sink:  # a file called vcam.mp4 stays a file
        assert isinstance(sink, MP4Sink)


# ---------------------------------------------------------------- signals and paths


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_finish_the_file_like_ctrl_c(tmp_path, signum):
    out = tmp_path / "styled.mp4"
    proc = subprocess.Popen([*SDV2, *RUN, "--source", "test:64x64@16", "--seconds", "100000", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        # work-bounded: the progress line shows frames were pushed into the engine
        assert wait_for(lambda: any(line.startswith("frames ") and not line.startswith("frames 0/")
                                    for line in list(lines)), timeout=300), lines
        proc.send_signal(signum)
        stdout = proc.stdout.read()  # until the process closes it: it exits
        proc.wait(timeout=300)
    finally:
        proc.kill()
    reader.join(60)
    err = "".join(lines)
    assert proc.returncode == 0, err  # as after Ctrl-C: the run ends normally with what was made
    assert f"stopping ({signal.Signals(signum).name})" in err and "Traceback" not in err
    assert f"wrote {out}" in stdout
    assert frames_in(out) > 0 and not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("where, words", [("file/sub/out.mp4", "file is a file, not a folder"),
                                          ("folder.mp4", "is a folder")], ids=["under-a-file", "a-folder"])
def test_cli_output_path_that_cannot_be_written_is_one_line(tmp_path, where, words, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "folder.mp4").mkdir()
    refused([*RUN, "--frames", "4", "--out", str(tmp_path / where)], words, capsys)
    assert (tmp_path / "file").read_text() == "a file, not a folder"


def test_broken_bench_extensions_are_one_warning_each_and_sdv2_keeps_working(monkeypatch, capsys):
    """A bench extension that raises, adds a flag sdv2 already has, or takes a built-in name is skipped with one
    warning line; the real one (transport, from the OBS bridge) and the built-in benches stay."""
    import importlib.metadata

    from sdv2_studio.engine import extensions
    from sdv2_studio.engine.cli import build_parser

    def raises(parser):
        raise RuntimeError("boom")

    def clashes(parser):
        parser.add_argument("--out")

    class Ext:
        def __init__(self, name, hook):
            self.name, self.value, self.hook = name, f"tests:{name}", hook

        def load(self):
            return self.hook

    real = importlib.metadata.entry_points
    fakes = [Ext("zz-raises", raises), Ext("zz-clashes", clashes), Ext("switch", lambda p: ("mine", None))]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [*real(group=group), *fakes]
                        if group == extensions.BENCH_GROUP else real(group=group))
    parser = build_parser()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sdv2: warning")]
    assert len(warnings) == 3 and all(w.count("\n") == 0 for w in warnings)
    assert "boom" in warnings[1] + warnings[2] and "built-in name" in " ".join(warnings)
    args = parser.parse_args(["bench", "switch"])
    assert "switch" not in args.extension_benches and "transport" in args.extension_benches
