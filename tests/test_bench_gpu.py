"""`sdv2 bench gpu` runs its whole path here, on the CPU with the tiny model (a GPU owner runs the same code)."""

from __future__ import annotations

import json

from sdv2_studio.engine import cli


def test_bench_gpu_through_the_cli(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    argv = ["bench", "gpu", "--model", "tiny", "--size", "64x64", "--steps", "2", "--chunks", "3", "--compiled",
            "eager", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and len(result["rows"]) == 1
    row = result["rows"][0]
    assert row["error"] is None, row["error"]
    assert (row["size"], row["steps"], row["gpus"], row["compiled"]) == ("64x64", 2, 1, False)
    assert row["fps"] > 0 and row["ttff_s"] > 0 and row["setup_s"] > 0
    assert {"encode", "dit", "decode"} <= set(row["stages_ms"]) and row["stages_ms"]["dit"] > 0
    assert row["sync_free"] is None and row["paper_fps"] is None  # no CUDA here: not claimed
    printed = capsys.readouterr().out
    assert "64x64 2 step(s) 1 GPU(s) eager" in printed and "fps, TTFF" in printed


def test_bench_gpu_bad_size_is_one_line(capsys):
    assert cli.main(["bench", "gpu", "--size", "480p,huge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "huge" in err[0]


def test_bench_gpu_without_a_gpu_says_how_to_try_it(capsys):
    assert cli.main(["bench", "gpu"]) == 2  # no CUDA here: the real-size default would run for hours
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and "--model tiny" in err[0]
