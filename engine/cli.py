"""`sdv2`: the headless command line. Every command goes through the same engine API as the GUI and OBS bridge.

User-facing problems raise `EngineError`; they are printed as one line (`sdv2: error: ...`) with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from sdv2_studio.engine import extensions
from sdv2_studio.engine.config import FIT_MODES, MAX_STEPS, MAX_TRANSITION, Controls, parse_weighted_prompt
from sdv2_studio.engine.errors import EngineError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from sdv2_studio.engine.checkpoint import format_file_info, identify

    print(format_file_info(identify(args.path)))
    return 0


def _cmd_sources(args: argparse.Namespace) -> int:
    from sdv2_studio.engine.io.sources import list_cameras

    cams = list_cameras()
    if not cams:
        print("no cameras found (Linux: /dev/video*; check the camera is connected and you may read it)")
    for cam in cams:
        print(f"{cam.spec:<24} {cam.name}")
    print("also: test[:WxH[@FPS]], a video file, rtmp:// srt:// udp:// URLs")
    return 0


def load_bench(name: str):
    """The module bench/<name>.py of the source checkout this package runs from: the benchmark tools live beside the
    package and are not installed (the engine never imports them)."""
    import importlib
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "bench"
    if not (folder / f"{name}.py").is_file():
        raise EngineError("`sdv2 bench` needs a source checkout (clone the repository and `pip install -e .` "
                          "there): the benchmark tools in bench/ are not installed")
    if "sdv2_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("sdv2_bench", folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["sdv2_bench"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"sdv2_bench.{name}")


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.what == "gpu"
    args.device = args.device or ("auto" if gpu else "cpu")
    args.dtype = args.dtype or ("auto" if gpu else "float32")
    if args.what == "roofline":
        return load_bench("roofline").main_roofline(args)
    if args.what in args.extension_benches:  # `sdv2 bench transport` from the OBS bridge, and others
        return args.extension_benches[args.what](args)
    if args.what == "switch":
        load_bench("switch").bench_switch(out=args.out or "bench/results/switch.json")
        return 0
    measure = load_bench("measure")
    if args.what == "model":
        points = tuple(int(p) for p in args.points.split(","))
        measure.bench_model(args.preset, points=points, device=args.device, dtype=args.dtype,
                            out=args.out or "bench/results/model.json")
    elif args.what == "parallel":
        model = args.model if args.model not in (None, "tiny") else "random:small"
        measure.bench_parallel(model, size=_parse_size(args.size) or (256, 256), chunks=args.chunks,
                               steps=args.steps or 2, out=args.out or "bench/results/parallel.json")
    elif args.what == "pipeline":
        measure.bench_pipeline(args.model or "tiny", size=_parse_size(args.size) or (256, 256), chunks=args.chunks,
                               device=args.device, dtype=args.dtype, out=args.out or "bench/results/pipeline.json")
    elif args.what == "gpu":
        sizes = tuple(args.size.split(",")) if args.size else ("480p", "512")
        for size in sizes:
            if size not in ("480p", "512"):
                _parse_size(size)  # WIDTHxHEIGHT, checked (one line on a bad value)
        if args.model is None and args.device in ("auto", "cpu") and not torch.cuda.is_available():
            raise EngineError("no CUDA GPU here: `sdv2 bench gpu` measures GPUs (its default, the 1.3B model at 480p, "
                              "would take hours on a CPU); to run its code path on the CPU pass --model tiny "
                              "--size 64x64")
        gpus = tuple(int(n) for n in args.gpus.split(",")) if args.gpus else None
        compiled = {"both": (False, True), "eager": (False,), "compiled": (True,)}[args.compiled]
        load_bench("gpu").bench_gpu(args.model or "random:wan2.1-1.3b", sizes=sizes,
                                    steps_list=(args.steps,) if args.steps else (1, 2, 3, 4), gpu_counts=gpus,
                                    compiled=compiled, chunks=args.chunks, device=args.device, dtype=args.dtype,
                                    out=args.out or "bench/results/gpu.json")
    return 0


def _parse_size(text: str | None) -> tuple[int, int] | None:
    from sdv2_studio.engine.io.frames import parse_size

    return parse_size(text)


def _run_torchrun_stage(args: argparse.Namespace) -> int:
    """A torchrun rank >= 1: build this rank's part from the same command line and serve until rank 0 stops."""
    from sdv2_studio.engine.api import resolve_dtype
    from sdv2_studio.engine.config import CacheConfig
    from sdv2_studio.engine.models import resolve_model
    from sdv2_studio.engine.parallel import StageSpec, rank_devices, split_blocks, stage_main

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    devices = rank_devices(args.device if "," in args.device else "auto", world)
    device = devices[local] if len(devices) > local else devices[-1]
    model = resolve_model(args.model, args.base, vae=args.vae, text_encoder=args.text_encoder,
                          tokenizer=args.tokenizer, loras=tuple(args.lora))
    spec = StageSpec(rank=rank, world=world, port=0, device=str(device),
                     dtype=str(resolve_dtype(args.dtype, device)).removeprefix("torch."), model=model.spec,
                     base=str(model.base) if model.base else None,
                     blocks=[(r.start, r.stop) for r in split_blocks(model.num_layers, world)],
                     size=_parse_size(args.size) or model.default_size,
                     slots=args.steps if not args.no_batch else 1, steps=args.steps, cache=CacheConfig(),
                     threads=max(1, (os.cpu_count() or 1) // world), taehv=args.taehv)
    stage_main(spec)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from sdv2_studio.engine.api import EngineConfig
    from sdv2_studio.engine.io.sinks import check_sink, is_file_spec, open_sink
    from sdv2_studio.engine.io.sources import check_source, open_source
    from sdv2_studio.engine.session import ERROR, Session, SessionStatus

    base = Controls()
    if args.preset:
        from sdv2_studio.engine.presets import find_preset, load_library

        presets, problems = load_library()
        base = find_preset(presets, args.preset, problems).controls
    given = {"steps": args.steps, "noise_scale": args.noise_scale, "seed": args.seed,
             "transition_chunks": args.transition}
    controls = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    if args.prompt:  # one --prompt is the prompt as typed; several are a blend, each TEXT[:WEIGHT]
        controls = controls.with_prompts([(args.prompt[0], 1.0)] if len(args.prompt) == 1 else
                                         [parse_weighted_prompt(p) for p in args.prompt])
    args.steps = controls.steps  # torchrun stages below read it
    spec = args.source
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0:
        return _run_torchrun_stage(args)  # launched by torchrun: ranks >= 1 serve their blocks
    cfg = EngineConfig(model=args.model, base=args.base, vae=args.vae, text_encoder=args.text_encoder,
                       tokenizer=args.tokenizer, loras=tuple(args.lora), device=args.device, dtype=args.dtype,
                       ranks=args.ranks, size=_parse_size(args.size), fit=args.fit, batch=not args.no_batch,
                       controls=controls,
                       latency_budget=args.latency_budget, taehv=args.taehv, target_fps=args.target_fps,
                       compile=args.compile)
    file_out = bool(args.out) and is_file_spec(args.out)
    _check_run_flags(args)
    check_source(spec)  # a missing file or a bad spec is one line now, not after the model loaded
    if args.out:
        check_sink(args.out)  # so are an unknown output and a missing optional package
    if file_out:
        _refuse_output_over_input(args.out, spec)

    def open_input(size: tuple[int, int]):
        h, w = size
        return open_source(f"test:{w}x{h}@16" if spec.lower() == "test" else spec, realtime=args.realtime)

    def open_outputs(source) -> dict:
        if not args.out:
            return {}
        if file_out:
            folder = Path(args.out).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EngineError(f"cannot create the output folder {folder} ({e.strerror or e}); pick another "
                                  "--out") from None
        return {"out": open_sink(args.out, fps=source.fps)}

    def progress(msg: str, frac: float) -> None:
        print(f"[{frac:4.0%}] {msg}", file=sys.stderr)

    session = Session(cfg, open_input, open_outputs, paced=bool(args.out) and not file_out,
                      frames=args.frames or None, seconds=args.seconds or None)
    _stop_on_signals()
    session.start(progress=progress)
    bundle, (h, w) = session.engine.bundle, session.engine.size
    if bundle.notice:  # the untrained tiny model; the passthrough model, which ignores the prompts
        print(f"NOTE: {bundle.notice}", file=sys.stderr)
    st = session.status()
    if st.live and not (args.frames or args.seconds):
        print("live source: press Ctrl-C to stop", file=sys.stderr)
    denoise = "" if bundle.model.passthrough else \
        f"{controls.steps} step(s) | {'Stream-Batch' if cfg.batch else 'no-batch'} | "
    print(f"model {bundle.name} | {w}x{h} | {denoise}source {session.source!r}", file=sys.stderr)
    if len(controls.weighted_prompts) > 1 and not bundle.model.passthrough:
        print("prompt blend: " + ", ".join(f"{w:.0%} {p!r}" for p, w in controls.weighted_prompts), file=sys.stderr)
    t0 = time.perf_counter()
    tty = sys.stderr.isatty()
    last_report = [0.0]

    def report(st: SessionStatus, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - last_report[0] < (0.5 if tty else 5.0):
            return
        last_report[0] = now
        of = f"/{st.total}" if st.total else ""
        line = f"frames {st.frames_in}{of} in, {st.frames_out} out, {st.frames_out / max(now - t0, 1e-9):.1f} fps"
        print(("\r" + line) if tty else line, end="\n" if final or not tty else "", file=sys.stderr, flush=True)

    def output_error(st: SessionStatus) -> str | None:
        return next((o.error for o in st.outputs if o.error), None)

    try:
        while not session.wait(0.2) and not output_error(st := session.status()):
            report(st)
    except KeyboardInterrupt as e:
        _stop_on_signals(ignore=True)  # a second SIGTERM/SIGHUP must not cut the finishing short
        try:
            print(f"\nstopping ({e or 'Ctrl-C'}): finishing the output with what was made...", file=sys.stderr)
        except OSError:  # the terminal is gone (SIGHUP): the output is finished all the same
            pass
    session.stop()
    st = session.status()
    report(st, final=True)
    wall = time.perf_counter() - t0
    if output_error(st):
        raise EngineError(output_error(st))
    if st.state == ERROR and st.failed != "source":
        raise EngineError(st.error)
    _print_summary(st, wall, args, file_out)
    if st.state == ERROR:  # the source failed mid-stream
        written = st.frames_out
        kept = f"; the {written} styled frames made before it are in {args.out}" if args.out and written else ""
        raise EngineError(f"{st.error}{kept}")
    if bundle.untrained:
        print("(untrained tiny test model: the output is noise-like by design; "
              "`sdv2 models download` gets the real model)")
    return 0


def _check_run_flags(args: argparse.Namespace) -> None:
    """The numbers and names of `sdv2 run` that nothing later checks: one line naming the flag."""
    import math
    import re

    if args.ranks < 1:
        raise EngineError(f"--ranks must be 1 or more, not {args.ranks}")
    for flag, value in (("--latency-budget", args.latency_budget), ("--target-fps", args.target_fps)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise EngineError(f"{flag} must be a positive number, not {value}")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?|(cpu|cuda:\d+|\d+)(,(cpu|cuda:\d+|\d+))+", args.device):
        raise EngineError(f"unknown --device {args.device!r}: use auto, cpu, cuda, cuda:N or a list like cuda:0,1")


def _refuse_output_over_input(out: str, source: str) -> None:
    """EngineError when the output file is the input file (same path, a link to it, or a hard link)."""
    from pathlib import Path

    src = Path(source.removeprefix("file://")).expanduser()
    dst = Path(out).expanduser()
    try:
        same = src.resolve() == dst.resolve() or (src.exists() and dst.exists() and os.path.samefile(src, dst))
    except OSError:  # unreadable paths: the source and sink report them
        same = False
    if same:
        raise EngineError(f"--out {out} is the input video {source}; writing it would destroy the input: "
                          "pick another output path")


def _stop_on_signals(ignore: bool = False) -> None:
    """SIGTERM and SIGHUP (a service manager, a closed terminal) stop `sdv2 run` like Ctrl-C: the outputs get what
    was made and are finished. ``ignore``: while finishing, they are ignored."""
    import signal

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):  # Windows has no SIGHUP
            signal.signal(getattr(signal, name), signal.SIG_IGN if ignore else interrupt)


def _print_summary(st, wall: float, args: argparse.Namespace, file_out: bool) -> None:
    """The lines `sdv2 run` ends with, from the session's final status (`file_out`: --out names a file)."""
    es, written = st.engine, st.frames_out
    ttff = f"{es.ttff:.2f} s" if es.ttff is not None else "-"
    print(f"frames in {es.frames_in}, out {written} (dropped {es.dropped_in} in / {es.dropped_out} out) "
          f"in {wall:.1f} s")
    print(f"throughput {written / wall:.2f} fps | latency p50 {es.latency_p50 * 1e3:.0f} ms, "
          f"p99 {es.latency_p99 * 1e3:.0f} ms | time to first frame {ttff} | {es.chunk_ms:.0f} ms per chunk")
    if es.slo is not None:
        print(f"SLO: plan {es.slo.plan.label()} (yours: {es.slo.user_plan.label()}), {es.slo.changes} change(s), "
              f"{es.slo.misses} missed chunk(s) of {es.slo.chunks}" + (f"; last: {es.slo.last_reason}"
                                                                       if es.slo.last_reason else ""))
    if not st.live and not args.realtime:
        print("(offline run: input was queued faster than real time, so latency includes queueing; "
              "add --realtime to measure live latency)")
    if args.out:
        done = f"wrote {args.out}" if file_out else f"sent {written} frames to {args.out}"
        print(done if written else f"nothing written to {args.out}: no styled frame came out")


class _Parser(argparse.ArgumentParser):
    """argparse with one error line, like every other `sdv2` error (its subcommand parsers are of this class too)."""

    def error(self, message: str):
        self.exit(2, f"sdv2: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but a flag the subcommand does not have points at that subcommand's help."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)
            parser = sub.choices.get(getattr(ns, "command", None), self) if sub is not None else self
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sdv2", description="StreamDiffusionV2 Studio engine (headless).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", help="stylise a video stream: a camera, a file, a URL or the built-in test source")
    s.add_argument("--source", default="test",
                   help="test[:WxH[@FPS]], a video file, camera:NAME or /dev/videoN, rtmp:// srt:// udp:// URLs")
    s.add_argument("--out", default="out/styled.mp4",
                   help="output: a .mp4 path, udp:// or srt:// stream, vcam, obs-source[:CHANNEL], ndi[:NAME], "
                        "spout[:NAME], syphon[:NAME] ('' for none)")
    s.add_argument("--seconds", type=float, default=None,
                   help="stop after this much source time (default: 3 s for the test source, else the whole input)")
    s.add_argument("--frames", type=int, default=None, help="stop after this many input frames")
    s.add_argument("--model", default="auto",
                   help="auto (downloaded model, else tiny), tiny, passthrough (no model: frames pass through "
                   "unchanged, to check the wiring), or a DiT checkpoint file or folder")
    s.add_argument("--base", default=None, help="Wan2.1 base folder with the VAE and text encoder: the original "
                   "release (Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/) or diffusers "
                   "(vae/, text_encoder/, tokenizer/); default: found beside --model or downloaded")
    s.add_argument("--vae", default=None, metavar="FILE", help="the VAE (Wan2.1_VAE.pth, a diffusers vae/ folder, "
                   "ComfyUI/Kijai single files); default: the base folder's")
    s.add_argument("--text-encoder", default=None, metavar="FILE", help="the umT5 text encoder (original .pth, "
                   "diffusers text_encoder/ folder, Kijai/ComfyUI single .safetensors); default: the base folder's")
    s.add_argument("--tokenizer", default=None, metavar="FOLDER",
                   help="umT5 tokenizer folder or spiece.model; default: beside the text encoder, or embedded")
    s.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="merge a Wan2.1 DiT LoRA at load (strength default 1.0); repeat for several")
    s.add_argument("--preset", default=None, help="start from a style preset (`sdv2 presets list`); the options "
                   "below override its fields")
    default = Controls()
    s.add_argument("--prompt", action="append", default=[], metavar="TEXT[:WEIGHT]",
                   help=f"default: {default.prompt!r}; repeat to blend prompts by weight, e.g. --prompt 'ink:0.7' "
                   "--prompt 'neon:0.3'")
    s.add_argument("--steps", type=int, default=None,
                   help=f"denoising steps 1-{MAX_STEPS} (default {default.steps})")
    s.add_argument("--noise-scale", type=float, default=None, help=f"(0, 1] (default {default.noise_scale})")
    s.add_argument("--seed", type=int, default=None, help=f"default {default.seed}")
    s.add_argument("--transition", type=int, default=None, help=f"chunks (0-{MAX_TRANSITION}) over which a prompt "
                   f"change blends in (default {default.transition_chunks})")
    s.add_argument("--size", default=None, help="model resolution WIDTHxHEIGHT (multiples of 16)")
    s.add_argument("--fit", choices=FIT_MODES, default="crop", help="framing of a source whose aspect differs from "
                   "the model size: crop (fill, cut the edges; default) or bars (show it all, black bars)")
    s.add_argument("--no-batch", action="store_true", help="run steps in sequence instead of Stream-Batch")
    s.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N, or a list for pipeline ranks: cuda:0,1,2,3")
    s.add_argument("--ranks", type=int, default=1,
                   help="pipeline-parallel stages: GPUs when that many exist, else CPU processes (gloo)")
    s.add_argument("--dtype", default="auto",
                   help="auto (bf16 on sm80+ GPUs, fp16 on older; fp32 on CPU), bfloat16, float16, float32")
    s.add_argument("--latency-budget", type=float, default=None, help="seconds; slower frames count as misses")
    s.add_argument("--target-fps", type=float, default=None,
                   help="SLO scheduling: adapt Stream-Batch/no-batch, steps and resolution to reach this rate")
    s.add_argument("--realtime", action="store_true", help="pace files and the test source at their frame rate")
    s.add_argument("--taehv", default=None, metavar="PATH", help="decode with the TAEHV tiny decoder (taew2_1.pth)")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT step (Inductor on CPU, CUDA graphs on GPU); the first run per "
                        "configuration compiles before streaming (minutes on a CPU), later runs load it from disk")
    s.set_defaults(fn=_cmd_run)

    s = sub.add_parser("inspect", help="say what a model file is (DiT, VAE, text encoder, LoRA, TAEHV): layout, "
                                       "size, parameter count and dtype")
    s.add_argument("path", help="a .safetensors/.pt/.pth file or a model folder")
    s.set_defaults(fn=_cmd_inspect)

    s = sub.add_parser("bench", help="benchmarks that print ratios and save JSON")
    s.add_argument("--steps", type=int, default=None, help="parallel: denoising steps (default 2); gpu: only these")
    s.add_argument("--gpus", default=None, help="gpu: GPU counts to run, e.g. 1,2 (default: 1 to all)")
    s.add_argument("--compiled", default="both", choices=["both", "eager", "compiled"], help="gpu: which hot paths")
    s.add_argument("--preset", default="small", help="model: DiT preset (default: small, dim 512 x 4 layers)")
    s.add_argument("--points", default="10,1000,10000", help="model: chunk indices to measure")
    s.add_argument("--model", default=None, help="pipeline: auto, tiny (default) or a checkpoint path; parallel: "
                                                  "default random:small; gpu: default random:wan2.1-1.3b")
    s.add_argument("--size", default=None, help="pipeline: WIDTHxHEIGHT (default 256x256); gpu: a comma list of "
                                                 "480p, 512 or WIDTHxHEIGHT (default 480p,512)")
    s.add_argument("--chunks", type=int, default=10, help="pipeline: chunks measured per configuration")
    s.add_argument("--device", default=None, help="default: cpu (gpu: auto)")
    s.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="default: float32 (gpu: auto)")
    s.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    s.add_argument("--out", "--json", default=None, help="JSON output path (default bench/results/<what>.json)")
    own = ["model", "pipeline", "parallel", "roofline", "gpu", "switch"]
    # after the built-in flags: an extension whose flag clashes with one fails to register (one warning), not sdv2
    benches = extensions.register(extensions.BENCH_GROUP, s, reserved=own)  # name -> (help, run); adds its flags
    s.add_argument("what", choices=[*own, *benches],
                   help="model: streaming DiT forward (flat cost, cache speedup, FLOP/s); "
                        "pipeline: stage split, fps and latency for 1-4 steps, Stream-Batch vs no-batch; "
                        "parallel: 1 vs 2 CPU pipeline ranks (one thread each), scaling efficiency; "
                        "roofline: predicted fps/TTFF/VRAM on H100 and RTX 4090 for 1-4 GPUs vs the paper; "
                        "gpu: the paper's configurations measured on your GPUs (random 1.3B weights; fps, TTFF, "
                        "stages, VRAM, host-sync check, ratio to the paper); "
                        "switch: what a preset switch costs (LoRA switch time and bytes, tiny/small measured and "
                        "1.3B on paper; chunk times while an uncached prompt encodes)"
                        + "".join(f"; {name}: {help_}" for name, (help_, _) in benches.items()))
    s.set_defaults(fn=_cmd_bench, extension_benches={name: run for name, (_, run) in benches.items()})

    s = sub.add_parser("sources", help="list the cameras found on this system")
    s.set_defaults(fn=_cmd_sources)

    from sdv2_studio.engine.doctor import register_cli as register_doctor
    from sdv2_studio.engine.hub import register_cli as register_models
    from sdv2_studio.engine.presets import register_cli as register_presets

    register_models(sub)
    register_presets(sub)
    register_doctor(sub)
    extensions.register(extensions.CLI_GROUP, sub)  # `sdv2 obs ...` from the OBS bridge, and others
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (`_Parser.error` printed its one line)
        return e.code if isinstance(e.code, int) else 2
    if getattr(args, "command", None) == "run" and args.seconds is None and args.frames is None \
            and args.source.lower().startswith("test"):
        args.seconds = 3.0
    try:
        return args.fn(args)
    except EngineError as e:
        print(f"sdv2: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdv2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
