"""One framing rule for every source (issue 14): a 16:9 picture reaches the model cropped to fill or fitted with bars,
the user's choice, never squashed, whether it comes from a file, a camera or OBS capture (engine.io.frames.fit_frame
is the one rule; OBS is asked for screenshots at the source's own aspect)."""

from __future__ import annotations

import base64
import itertools
import os
import subprocess
import sys
import threading
from fractions import Fraction

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import av
import numpy as np
import pytest
from sdv2_studio.engine.api import Engine, EngineConfig
from sdv2_studio.engine.errors import EngineError
from sdv2_studio.engine.io.frames import fit_frame, resize, restore_frame
from sdv2_studio.engine.io.sinks import MP4Sink
from sdv2_studio.engine.io.sources import AVSource, open_source
from sdv2_studio.engine.models import tiny_bundle

SRC = (180, 320)  # 16:9
MODEL = (128, 128)
SQUARE = 90  # a white square of this side in the middle of the 16:9 picture


def picture() -> np.ndarray:
    img = np.full((*SRC, 3), 90, np.uint8)
    top, left = (SRC[0] - SQUARE) // 2, (SRC[1] - SQUARE) // 2
    img[top:top + SQUARE, left:left + SQUARE] = 255
    return img


def square(frame: np.ndarray) -> tuple[int, int]:
    """(height, width) of the white square as framed."""
    ys, xs = np.nonzero(frame.mean(axis=2) > 172)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def check_framed(frame: np.ndarray, fit: str) -> None:
    """The 16:9 picture framed to MODEL with its aspect kept: the square stays square, at the scale of the rule."""
    assert frame.shape == (*MODEL, 3)
    h, w = square(frame)
    assert abs(h - w) <= 2, f"the square became {w}x{h}: the picture was squashed"
    scale = max(MODEL[0] / SRC[0], MODEL[1] / SRC[1]) if fit == "crop" else min(MODEL[0] / SRC[0], MODEL[1] / SRC[1])
    assert abs(h - SQUARE * scale) <= 3
    rows = frame.mean(axis=(1, 2))
    bar = (MODEL[0] - round(SRC[0] * MODEL[1] / SRC[1])) // 2  # 28 rows above and below with bars
    if fit == "bars":
        assert rows[:bar - 2].max() < 12 and rows[-(bar - 2):].max() < 12  # black bars
        assert rows[bar + 2:-(bar + 2)].min() > 60  # the whole picture between them
    else:
        assert rows.min() > 60  # filled: no bars


@pytest.mark.parametrize("fit", ["crop", "bars"])
def test_fit_frame_keeps_the_aspect_and_restore_undoes_it(fit):
    framed = fit_frame(picture(), MODEL, fit)
    check_framed(framed, fit)
    back = restore_frame(framed, SRC, fit=fit)
    assert back.shape == (*SRC, 3)
    h, w = square(back)
    assert abs(h - SQUARE) <= 3 and abs(w - SQUARE) <= 3  # back where it was, at its size
    with pytest.raises(EngineError, match="use crop .* or bars"):
        fit_frame(picture(), MODEL, "stretch")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("framing") / "wide.mp4"
    with MP4Sink(path, 16) as sink:
        for _ in range(9):
            sink.write(picture())
    return path


def model_inputs(source, fit: str, bundle) -> list[np.ndarray]:
    """What the model is given when `source`'s frames are pushed into an engine framing with `fit`."""
    eng = Engine(EngineConfig(model="tiny", size=MODEL, fit=fit, lossless=True, batch=False), bundle)
    eng.start()
    seen, done = [], threading.Event()
    process = eng.pipeline.process

    def recording(frames):
        seen.extend(frames)
        done.set()
        return process(frames)

    eng.pipeline.process = recording
    try:
        for frame, _pts in itertools.islice(source, 9):  # (a camera's clip ending would read as unplugged)
            assert frame.shape[:2] == SRC  # the source gives its own 16:9 frames; the engine frames them
            eng.push(frame)
        assert done.wait(300)
    finally:
        eng.stop()
        source.close()
    return seen


@pytest.mark.parametrize("fit", ["crop", "bars"])
@pytest.mark.parametrize("kind", ["file", "camera"])
def test_files_and_cameras_are_framed_by_the_chosen_rule(clip, fit, kind):
    if kind == "file":
        source = open_source(str(clip))
    else:  # a camera is an AVSource of kind "camera" (as camera_source opens /dev/videoN), here without a device
        source = AVSource(clip, drop_stale=False, label="camera /dev/video0")
        source.kind = "camera"
    seen = model_inputs(source, fit, tiny_bundle())
    assert len(seen) >= 5
    for frame in seen:
        check_framed(frame, fit)


class FakeObs:
    """obs-websocket's GetSourceScreenshot as OBS answers it: the source rendered at exactly the width and height
    asked for (a different aspect is squashed), JPEG-encoded."""

    def __init__(self, picture: np.ndarray):
        self.picture, self.asked = picture, []
        self.settings = type("S", (), {"timeout": 1.0})()
        self.connected = True

    def connect(self):
        return type("Info", (), {"image_formats": ["jpg", "png"]})()

    def call(self, request, data):
        assert request == "GetSourceScreenshot"
        h, w = data.get("imageHeight", self.picture.shape[0]), data.get("imageWidth", self.picture.shape[1])
        self.asked.append((h, w))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(resize(self.picture, h, w)), format="rgb24")
        ctx = av.CodecContext.create("mjpeg", "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = w, h, "yuvj420p", Fraction(1, 30)
        jpeg = b"".join(bytes(p) for p in ctx.encode(frame.reformat(format="yuvj420p")))
        return {"imageData": "data:image/jpg;base64," + base64.b64encode(jpeg).decode()}

    def close(self):
        self.connected = False


@pytest.mark.parametrize("fit", ["crop", "bars"])
def test_obs_capture_asks_for_the_sources_aspect_and_frames_by_the_same_rule(fit):
    from sdv2_studio.obs_bridge.capture import ObsCaptureSource

    obs = FakeObs(picture())
    cap = ObsCaptureSource("Camera", size=MODEL, fps=30, client=obs, fit=fit)
    try:
        frame, _pts = cap.get(timeout=30)
    finally:
        cap.close()
    h, w = obs.asked[-1]
    assert abs(w / h - SRC[1] / SRC[0]) < 0.02  # never a squashed screenshot
    check_framed(frame, fit)


def test_cli_fit_bars_keeps_the_source_size_and_refuses_unknown_framing(clip, tmp_path):
    out = tmp_path / "styled.mp4"
    cmd = [sys.executable, "-m", "sdv2_studio.engine.cli", "run", "--model", "tiny", "--source", str(clip),
           "--size", "64x64", "--frames", "9", "--out", str(out)]
    done = subprocess.run([*cmd, "--fit", "bars"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert (stream.height, stream.width) == SRC  # the bars are dropped again: the source's own frame
    bad = subprocess.run([*cmd, "--fit", "stretch"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "invalid choice: 'stretch'" in bad.stderr


def test_the_engine_tab_sets_the_framing_of_the_next_start(qtbot, tmp_path):
    pytest.importorskip("pytestqt")
    from sdv2_studio.app.settings import SettingsStore
    from test_app_window import make_window

    w = make_window(qtbot, tmp_path, tiny_bundle(), control=False)
    try:
        panel = w.engine_panel
        assert panel.framing.currentData() == "crop" and w.request().config.fit == "crop"
        panel.framing.setCurrentIndex(panel.framing.findData("bars"))
        panel.framing.activated.emit(panel.framing.currentIndex())  # as a user's pick
        assert w.settings.fit == "bars" and w.request().config.fit == "bars"
    finally:
        w.close()
    assert SettingsStore(tmp_path / "settings.json").load()[0].fit == "bars"  # kept for the next run
    (tmp_path / "settings.json").write_text('{"version": 2, "fit": "stretch"}')
    s, notes = SettingsStore(tmp_path / "settings.json").load()
    assert s.fit == "crop" and any("framing 'stretch'" in n for n in notes)


@pytest.mark.parametrize("fit", ["crop", "bars"])
def test_real_obs_capture_of_a_16_9_image_keeps_its_aspect(tmp_path, fit):
    from sdv2_studio.obs_bridge.capture import ObsCaptureSource
    from sdv2_studio.obs_bridge.client import ObsClient
    from sdv2_studio.obs_bridge.headless import HeadlessObs, obs_binary

    if obs_binary() is None:
        pytest.skip("the `obs` binary is not installed (apt-get install obs-studio xvfb)")
    image = tmp_path / "wide.png"
    frame = av.VideoFrame.from_ndarray(picture(), format="rgb24")
    with av.open(str(image), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = SRC[1], SRC[0], "rgb24"
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    with HeadlessObs(tmp_path / "obs") as obs:
        client = ObsClient(obs.settings)
        client.connect()
        try:
            client.call("CreateScene", {"sceneName": "Wide"})
            client.call("CreateInput", {"sceneName": "Wide", "inputName": "wide-image",
                                        "inputKind": client.info.find_kind("image_source"),
                                        "inputSettings": {"file": str(image)}})
        finally:
            client.close()
        cap = ObsCaptureSource("wide-image", obs.settings, size=MODEL, fps=10, fit=fit)
        try:
            assert cap.native_size == SRC
            got = cap.get(timeout=60)
        finally:
            cap.close()
    assert got is not None
    check_framed(got[0], fit)
