"""`sdv2 doctor`: one screen that says whether this machine can stream, and what to fix for each problem.

Checks: Python and torch (CPU or CUDA build), GPUs and their VRAM, the model files, what the model that will run
needs (`memory_estimate`: the figure the app's Engine tab shows), disk space for them, PyAV's
H.264 encoder (recording, the OBS stream), OBS reachability (registered by the OBS bridge, see
engine/extensions.py), virtual-camera support (pyvirtualcam and its backends, a v4l2loopback device on
Linux), Spout (Windows) / Syphon (macOS) / NDI (engine/io/availability.py), and the desktop GUI toolkit (found
without importing it: `engine` never imports Qt). Each check is OK, WARN (works, with a limitation) or FAIL
(something is broken); the exit status is 1 when any check fails. Nothing is downloaded, opened for writing or started.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sdv2_studio.engine import extensions
from sdv2_studio.engine.errors import EngineError

OK, WARN, FAIL = "ok", "warn", "fail"
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
MODEL_DOWNLOAD_GB = 30  # the default download (1.3B DiT + Wan2.1 base with umT5-XXL), rounded up


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def vram_needs() -> tuple[int, int]:
    """(minimum, recommended) GB of VRAM for the 1.3B model, umT5 on the CPU (engine/memory.py): 512x512 with 1 step
    and no Stream-Batch, and its default 480x832 with 2-step Stream-Batch."""
    from sdv2_studio.engine.memory import GiB, reference

    low, default = reference(steps=1, batch=False, size=(512, 512)), reference()
    return math.ceil(low.total / GiB), math.ceil(default.total / GiB)


def memory_estimate(model: str = "auto", size: tuple[int, int] | None = None, *, device: str = "auto",
                    dtype: str = "auto", steps: int = 2, batch: bool = True, gpus: int = 1,
                    text_on_gpu: bool = False, **files):
    """(the model that will actually run, the memory its stream needs) for settings as the app's Engine tab holds
    them (`device` "auto": a CUDA GPU when torch sees one, else the CPU; `size` (h, w), default the model's own;
    `files`: vae/text_encoder/tokenizer/loras). The Engine tab shows this same figure (engine.memory.for_settings).
    EngineError when `model` names no usable model."""
    import torch
    from sdv2_studio.engine.memory import for_settings
    from sdv2_studio.engine.models import resolve_model

    resolved = resolve_model(model, **files)
    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return resolved, for_settings(resolved, size or resolved.default_size, gpu=gpu, dtype=dtype, steps=steps,
                                  batch=batch, gpus=gpus, text_on_gpu=text_on_gpu)


# -- individual checks --------------------------------------------------------------------------------------------


def check_torch() -> list[Check]:
    try:
        import torch
    except Exception as e:  # a broken install is exactly what this reports
        return [Check("torch", FAIL, f"cannot import torch ({type(e).__name__}: {e})",
                      "reinstall it: pip install --force-reinstall torch (CUDA: add --index-url " + CUDA_INDEX + ")")]
    from sdv2_studio.engine.device import native_bf16

    cuda = torch.version.cuda
    build = f"CUDA {cuda} build" if cuda else "CPU-only build"
    checks = [Check("torch", OK, f"{torch.__version__} ({build})")]
    min_gb, recommended_gb = vram_needs()
    gpus = []
    if cuda and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gb = p.total_memory / 1024**3
            gpus.append((i, p.name, gb, f"{p.major}.{p.minor}"))
    if not gpus:
        nvidia = shutil.which("nvidia-smi") is not None
        if nvidia and not cuda:
            fix = ("an NVIDIA driver is installed but torch is the CPU build: "
                   f"pip install torch --index-url {CUDA_INDEX}")
        elif cuda:
            fix = "torch has CUDA but sees no GPU: update the NVIDIA driver (nvidia-smi must list the GPU)"
        else:
            fix = (f"the real model needs an NVIDIA GPU with {recommended_gb}+ GB (install the driver, then the "
                   f"CUDA build of torch: pip install torch --index-url {CUDA_INDEX}); the tiny demo model runs on "
                   "the CPU")
        checks.append(Check("GPU", WARN, "no CUDA GPU available: CPU only", fix))
        return checks
    for i, name, gb, cc in gpus:
        if gb < min_gb:
            status, fix = FAIL, (f"{gb:.0f} GB is too little for the 1.3B model; use the tiny demo or a GPU with "
                                 f"{recommended_gb}+ GB")
        elif gb < recommended_gb:
            status, fix = WARN, ("tight for 480x832: pick 512x512 or lower, 1-2 steps, or Stream-Batch off (the app "
                                 "shows a memory estimate per setting)")
        else:
            status, fix = OK, ""
        bf16 = "bf16" if native_bf16(torch.device("cuda", i)) else "no native bf16: auto uses float16"
        checks.append(Check(f"GPU {i}", status, f"{name}, {gb:.1f} GB VRAM, compute {cc}, {bf16}", fix))
    return checks


def check_memory() -> list[Check]:
    """What Model = Auto will run here (the tiny demo until the real model is downloaded) and what it needs at its
    own size with 2-step Stream-Batch, against this machine's VRAM or RAM."""
    import torch
    from sdv2_studio.engine.memory import available_host_memory, check_fit

    try:
        model, est = memory_estimate()
    except EngineError as e:  # e.g. a downloaded checkpoint that does not read
        return [Check("memory", WARN, f"cannot size the model Auto would run: {e}",
                      "`sdv2 models download` repairs the download; `sdv2 inspect FILE` says what a file is")]
    on_gpu = torch.cuda.is_available()
    capacity = torch.cuda.get_device_properties(0).total_memory if on_gpu else available_host_memory()
    level, text = check_fit(est, capacity)
    h, w = model.default_size
    where = "GPU 0" if on_gpu else "no GPU: CPU"
    detail = f"{model.name} at {w}x{h}, 2 steps, Stream-Batch on {where}: {est.breakdown()}"
    if level == "no":
        return [Check("memory", WARN, detail, text)]
    return [Check("memory", OK, detail)]


def check_models() -> list[Check]:
    from sdv2_studio.engine.models import find_downloaded, models_dir

    root = models_dir()
    checks = []
    found = find_downloaded()
    if found:
        checks.append(Check("model files", OK, f"StreamDiffusionV2 1.3B and the Wan2.1 base in {root}"))
    else:
        detail = f"not downloaded (looked in {root})"
        try:
            from sdv2_studio.engine import hub

            parts = [f"{it.name}: {hub.status(it)}" for it in hub.default_items()]
            detail = f"{', '.join(parts)} (in {root})"
        except (ImportError, EngineError):
            pass
        checks.append(Check("model files", WARN, detail,
                            "run `sdv2 models download` (or the app's first-run dialog); until then the app uses "
                            "the untrained tiny demo model"))
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free / 1e9
    except OSError:
        return checks
    if not found and free < MODEL_DOWNLOAD_GB:
        checks.append(Check("disk space", FAIL, f"{free:.0f} GB free at {probe}",
                            f"the download needs about {MODEL_DOWNLOAD_GB} GB: free space or set SDV2_MODELS to a "
                            "folder on a bigger disk"))
    else:
        checks.append(Check("disk space", OK, f"{free:.0f} GB free at {probe}"))
    return checks


def check_video() -> list[Check]:
    try:
        import av
    except Exception as e:
        return [Check("PyAV", FAIL, f"cannot import av ({e})", "pip install --force-reinstall av")]
    try:
        av.codec.Codec("libx264", "w")
        enc = "libx264"
    except Exception:
        enc = None
    if enc:
        return [Check("video encoder", OK, f"PyAV {av.__version__} with libx264 (recording, the OBS stream)")]
    return [Check("video encoder", WARN, f"PyAV {av.__version__} without libx264: recordings fall back to MPEG-4",
                  "install the PyAV wheel from PyPI (it bundles libx264): pip install --force-reinstall av")]


def _v4l2loopback_devices(root: Path = Path("/sys/class/video4linux")) -> list[str]:
    found = []
    for dev in sorted(root.glob("video*")) if root.is_dir() else []:
        try:
            name = (dev / "name").read_text().strip()
        except OSError:
            continue
        if "loopback" in name.lower() or "dummy" in name.lower() or "virtual" in name.lower():
            found.append(f"/dev/{dev.name} ({name})")
    return found


def check_virtual_camera() -> list[Check]:
    version = _version("pyvirtualcam")
    if version is None:
        return [Check("virtual camera", WARN, "pyvirtualcam is not installed",
                      "pip install 'streamdiffusion-studio[obs]' (or pip install pyvirtualcam)")]
    try:
        from pyvirtualcam.camera import BACKENDS

        backends = sorted(BACKENDS)
    except Exception as e:
        return [Check("virtual camera", FAIL, f"pyvirtualcam {version} is installed but fails to load ({e})",
                      "pip install --force-reinstall pyvirtualcam")]
    if not backends:
        return [Check("virtual camera", WARN, f"pyvirtualcam {version}: no backend for this platform",
                      "install OBS Studio (its virtual camera) or Unity Capture (Windows)")]
    detail = f"pyvirtualcam {version}, backends: {', '.join(backends)}"
    if sys.platform.startswith("linux"):
        devices = _v4l2loopback_devices()
        if not devices:
            return [Check("virtual camera", WARN, detail + "; no v4l2loopback device",
                          "sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback exclusive_caps=1 "
                          "card_label=StreamDiffusionV2")]
        detail += f"; devices: {', '.join(devices)}"
    return [Check("virtual camera", OK, detail)]


def check_low_latency_outputs() -> list[Check]:
    """Spout (Windows), Syphon (macOS) and NDI: engine.io.availability, the answer the app shows on its toggles."""
    from sdv2_studio.engine.io.availability import LABELS, PLATFORMS, low_latency_outputs

    checks, elsewhere = [], []
    for kind, a in low_latency_outputs(sys.platform).items():
        if PLATFORMS.get(kind, sys.platform) != sys.platform:
            elsewhere.append(LABELS[kind])
        else:
            checks.append(Check(LABELS[kind], OK if a.ok else WARN, a.detail, a.fix))
    if elsewhere:
        checks.append(Check("/".join(elsewhere), OK, "not used on this platform; NDI, the OBS plugin and the UDP "
                            "stream feed OBS here"))
    return checks


def check_gui() -> list[Check]:
    """Without importing Qt: `engine` must stay Qt-free."""
    if importlib.util.find_spec("PySide6") is None:
        return [Check("desktop app", WARN, "PySide6 is not installed (only the `sdv2` command line works)",
                      "pip install 'streamdiffusion-studio[gui]'")]
    version = _version("PySide6-Essentials") or _version("PySide6") or "?"
    if version.startswith("6.12.0") and sys.version_info < (3, 12):
        return [Check("desktop app", FAIL, f"PySide6 {version} crashes on Python {platform.python_version()} "
                      "(reference-count bug: 'deallocating None')",
                      "pip install 'PySide6-Essentials>=6.6,<6.12' (or use Python 3.12+)")]
    return [Check("desktop app", OK, f"PySide6 {version}")]


CHECKS: tuple[Callable[[], list[Check]], ...] = (check_torch, check_models, check_memory, check_video,
                                                 check_virtual_camera, check_low_latency_outputs, check_gui)


def run_checks(checks=None) -> list[Check]:
    """The engine's checks, then those the installed extensions register (the OBS bridge's `OBS` check)."""
    out: list[Check] = []
    if checks is None:
        found, problems = extensions.load(extensions.DOCTOR_GROUP)
        checks = (*CHECKS, *(fn for _, fn in found))
        out += [Check("extensions", WARN, p, "reinstall streamdiffusion-studio") for p in problems]
    for fn in checks:
        try:
            out += fn()
        except Exception as e:  # a crashing check is reported, the others still run
            out.append(Check(fn.__name__.removeprefix("check_"), FAIL, f"the check itself failed: "
                             f"{type(e).__name__}: {e}", "please report this"))
    return out


def _symbols() -> dict[str, str]:
    try:
        "✓✗!".encode(sys.stdout.encoding or "ascii")
        return {OK: "✓", WARN: "!", FAIL: "✗"}
    except (UnicodeEncodeError, LookupError):
        return {OK: "ok", WARN: "!!", FAIL: "XX"}


def format_report(checks: list[Check]) -> str:
    sym = _symbols()
    try:
        version = importlib.metadata.version("streamdiffusion-studio")
    except importlib.metadata.PackageNotFoundError:
        version = "(source tree)"
    lines = [f"StreamDiffusionV2 Studio {version} · Python {platform.python_version()} · "
             f"{platform.system()} {platform.machine()}", ""]
    width = max(len(c.name) for c in checks) if checks else 0
    for c in checks:
        lines.append(f" {sym[c.status]:>2} {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"    {'':<{width}}  → {c.fix}")
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines += ["", "all good: ready to stream" if not (fails or warns) else
              f"{fails} problem(s), {warns} warning(s)" + (": fix the ✗ lines first" if fails else "")]
    return "\n".join(lines)


def _cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_checks()
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=1))
    else:
        print(format_report(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add `doctor` to an argparse subparsers object (as made by add_subparsers)."""
    p = subparsers.add_parser("doctor", help="check GPUs, model files, OBS, virtual camera; say what to fix",
                              description="Check this machine for streaming and print what to fix.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m sdv2_studio.engine.doctor` (same as `sdv2 doctor`)."""
    parser = argparse.ArgumentParser(prog="sdv2")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", *(argv if argv is not None else sys.argv[1:])])
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
