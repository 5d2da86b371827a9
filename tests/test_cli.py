"""`sdv2` end to end: the real console script in a subprocess, and the in-process entry for error paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import pytest
from helpers import refused
from sdv2_studio.engine.checkpoint import save_model
from sdv2_studio.engine.cli import main
from sdv2_studio.engine.models import tiny_bundle

SDV2 = [sys.executable, "-m", "sdv2_studio.engine.cli"]


def sdv2(*args: str, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*SDV2, *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def count_frames(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return len(frames), frames[0].height, frames[0].width


def stream_fps(path: Path) -> float:
    with av.open(str(path)) as c:
        return float(c.streams.video[0].average_rate)


def test_run_tiny_on_test_source_writes_mp4_and_reports(tmp_path):
    out = tmp_path / "sub" / "styled.mp4"
    r = sdv2("run", "--model", "tiny", "--source", "test:160x96@16", "--frames", "13", "--size", "64x64",
             "--out", str(out), env={**os.environ})
    assert r.returncode == 0, r.stderr
    assert count_frames(out) == (13, 96, 160)  # every frame, at the source's size
    assert "UNTRAINED" in r.stderr and "untrained" in r.stdout
    assert "fps" in r.stdout and "latency p50" in r.stdout and "time to first frame" in r.stdout
    assert "Traceback" not in r.stderr


def test_run_a_video_file_in_no_batch_mode(tmp_path):
    from sdv2_studio.engine.io.pattern import TestPatternSource
    from sdv2_studio.engine.io.sinks import MP4Sink

    clip = tmp_path / "in.mp4"
    src = TestPatternSource(size=(64, 64), fps=16)
    with MP4Sink(clip, fps=12) as sink:
        for i in range(10):
            sink.write(src.frame(i))
    out = tmp_path / "out.mp4"
    assert main(["run", "--model", "tiny", "--source", str(clip), "--out", str(out), "--size", "64x64",
                 "--no-batch", "--steps", "1"]) == 0
    assert count_frames(out) == (10, 64, 64)
    assert stream_fps(out) == pytest.approx(12, abs=0.01)  # the source's frame rate is kept


def test_inspect_a_checkpoint(tmp_path, capsys):
    path = save_model(tiny_bundle().dit, tmp_path / "tiny.safetensors")
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "tiny" in text and "wan" in text.lower()


@pytest.mark.parametrize("argv, words", [
    (["inspect", "/nonexistent/model.safetensors"], "not found"),
    (["run", "--model", "tiny", "--source", "/nonexistent/clip.mp4", "--out", ""], "no such video file"),
    (["run", "--model", "tiny", "--steps", "9"], "1 to 4"),
    (["run", "--model", "tiny", "--size", "100x100"], "multiple of 16"),
    (["run", "--model", "/nonexistent/weights.pt"], "does not exist"),
])
def test_bad_input_is_one_line_not_a_traceback(argv, words, capsys):
    refused(argv, words, capsys)


def test_bad_checkpoint_through_the_console_script(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 64)
    r = sdv2("inspect", str(bad))
    assert r.returncode == 2
    assert r.stderr.startswith("sdv2: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1




def test_source_dying_mid_stream_keeps_the_output(tmp_path, monkeypatch, capsys):
    import sdv2_studio.engine.io.sources as sources
    from sdv2_studio.engine.errors import EngineError
    from sdv2_studio.engine.io.pattern import TestPatternSource

    class DyingCamera(TestPatternSource):
        kind = "camera"

        def __iter__(self):
            for i, item in enumerate(super().__iter__()):
                if i == 11:
                    raise EngineError("camera /dev/video9 disappeared: reconnect it or pick another source")
                yield item

    monkeypatch.setattr(sources, "open_source", lambda spec, **kw: DyingCamera(size=(64, 64), fps=16))
    out = tmp_path / "kept.mp4"
    assert main(["run", "--model", "tiny", "--source", "/dev/video9", "--size", "64x64", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "disappeared" in err and "kept.mp4" in err
    n, h, w = count_frames(out)
    assert n >= 4 and (h, w) == (64, 64)  # what was styled before the camera died is in a playable file
