"""Small helpers shared by the test modules (tests/ is on sys.path under pytest's default import mode)."""

from __future__ import annotations

import time

import numpy as np


def wait_for(predicate, timeout: float = 60.0, poll: float = 0.05) -> float | None:
    """Seconds until ``predicate()`` held (never 0, so ``assert wait_for(...)`` works), or None on timeout. The
    default timeout is generous: a loaded 2-core CI runner is several times slower than a desktop."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return max(time.monotonic() - t0, 1e-6)
        time.sleep(poll)
    return None


def refused(argv: list[str], words: str, capsys) -> str:
    """Run `sdv2 argv` in-process: exit status 2, the last line `sdv2: error: ...` naming `words`, no traceback."""
    from sdv2_studio.engine.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("sdv2: error:") and words in last, err
    assert "Traceback" not in err and err.count("sdv2: error:") == 1
    return last


def median_rgb(frame: np.ndarray) -> np.ndarray:
    return np.median(frame.reshape(-1, 3), axis=0)


def random_taehv(seed: int = 0, **kw):
    """A TAEHV decoder with seeded random weights scaled by fan-in (activations stay O(1) through its stack)."""
    import torch
    from sdv2_studio.engine.taehv import TAEHVDecoder

    m = TAEHVDecoder(**kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        m.decoder[22].weight.mul_(0.2)
        m.decoder[22].bias.fill_(0.5)
    return m.eval()
