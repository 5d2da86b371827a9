"""An NDI receiver in its own process, for tests/test_ndi.py and tests/test_app_outputs.py:

    python tests/ndi_receiver.py NAME OUT_DIR TIMEOUT_S [REF.npy]

finds the source ``HOST (NAME)``, connects, and writes ``OUT_DIR/frame.npy`` (the first frame as RGB uint8 HxWx3 that
is within 4 mean 8-bit levels of REF, or any frame without REF) and ``OUT_DIR/rate.txt`` (its frame rate as N/D).
Exit 0 when it got one, 1 with one line of what it saw on timeout.

Its own process because cyndilib's ``Finder.wait_for_sources`` and ``Receiver.receive`` wait inside NDI holding the
GIL: a receive loop in the test process starved the threads making the frames (an app's engine under test got ~2% of
the interpreter and sent nothing for 120 s), and shorter waits made NDI deliver late (a receive timeout of 0 got the
first frame of a connected, sending source only after ~70 s). A separate receiver is also what a viewer really is.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NDI_CONFIG_DIR", str(Path(__file__).resolve().parent / "ndi"))  # loopback only

import cyndilib
import numpy as np
from cyndilib.receiver import ReceiveFrameType


def main(name: str, out: Path, timeout: float, ref: np.ndarray | None) -> int:
    deadline = time.monotonic() + timeout
    finder = cyndilib.Finder()
    finder.open()
    try:
        found: list[str] = []
        while not found and time.monotonic() < deadline:
            finder.wait_for_sources(0.5)
            found = [n for n in finder.get_source_names() if n.endswith(f"({name})")]
        if not found:
            seen = finder.get_source_names()
            print(f"no NDI source named {name!r} within {timeout} s; seen: {seen}", file=sys.stderr)
            return 1
        receiver = cyndilib.Receiver(color_format=cyndilib.RecvColorFormat.RGBX_RGBA,
                                     bandwidth=cyndilib.RecvBandwidth.highest)
        video = cyndilib.VideoRecvFrame()
        receiver.set_video_frame(video)
        receiver.connect_to(finder.get_source(found[0]))
        frames, closest = 0, None
        try:
            while time.monotonic() < deadline:
                if not receiver.receive(ReceiveFrameType.recv_video, 200) & ReceiveFrameType.recv_video:
                    continue
                frames += 1
                w, h = video.get_resolution()
                data = np.empty(video.get_data_size(), np.uint8)
                video.fill_p_data(data)
                rgb = data.reshape(h, video.get_line_stride() // 4, 4)[:, :w, :3].copy()
                if ref is not None:
                    if rgb.shape != ref.shape:
                        continue
                    diff = float(np.abs(rgb.astype(int) - ref).mean())
                    closest = diff if closest is None else min(closest, diff)
                    if diff >= 4:
                        continue
                np.save(out / "frame.npy", rgb)
                rate = video.get_frame_rate()
                (out / "rate.txt").write_text(f"{rate.numerator}/{rate.denominator}")
                return 0
        finally:
            receiver.disconnect()
        print(f"no wanted frame from {found[0]!r} within {timeout} s: {frames} frames received, closest mean "
              f"difference {closest}, connected {receiver.is_connected()}", file=sys.stderr)
        return 1
    finally:
        finder.close()


if __name__ == "__main__":
    _name, _out, _timeout, *_ref = sys.argv[1:]
    sys.exit(main(_name, Path(_out), float(_timeout), np.load(_ref[0]) if _ref else None))
