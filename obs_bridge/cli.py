"""`sdv2 obs ...`: the OBS bridge on the command line (registered into engine.cli with :func:`register_cli`).

    sdv2 obs status                              OBS version, capabilities, health; the app's state if it runs
    sdv2 obs sources                             scenes and inputs (what --scene and --input accept)
    sdv2 obs attach --scene S [--input SOURCE | --camera SPEC] [--sink udp|srt|vcam]
    sdv2 obs detach                              remove the StreamDiffusionV2 input from OBS
    sdv2 obs set-password                        store the obs-websocket password (OS keyring when available;
                                                 read from stdin when it is not a terminal)
    sdv2 obs script-path                         where obs_script.py is (OBS: Tools > Scripts > +)
    sdv2 obs install-plugin                      build the native plugin (source + filter) into OBS (Linux)
    sdv2 obs app status|presets|preset NAME|steps N|start|stop     drive the running app (its control API)

Connection: --host/--port override the saved settings; the password comes from $SDV2_OBS_PASSWORD, the OS
keyring or the settings file (never from the command line, where other users could read it).
Heavy imports happen inside the commands, so `sdv2 --help` stays fast and works without the obs extra.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from sdv2_studio.engine.config import FIT_MODES, MAX_STEPS, Controls, parse_weighted_prompt
from sdv2_studio.engine.errors import EngineError


def _need_obsws() -> None:
    try:
        import obsws_python  # noqa: F401
    except ImportError:
        raise EngineError("the OBS bridge needs obsws-python: pip install obsws-python "
                          "(or `pip install 'streamdiffusion-studio[obs]'`)") from None


def _settings(args: argparse.Namespace):
    from sdv2_studio.obs_bridge.settings import keyring_get, load_settings

    s = load_settings()
    if args.host or args.port:
        s.host, s.port = args.host or s.host, args.port or s.port
        if not os.environ.get("SDV2_OBS_PASSWORD"):
            s.password = keyring_get(s.host, s.port) or s.password
    if args.timeout:
        s.timeout = args.timeout
    return s


def _client(args: argparse.Namespace):
    _need_obsws()
    from sdv2_studio.obs_bridge.client import ObsClient

    return ObsClient(_settings(args), auto_reconnect=False)


def _app_client():
    from sdv2_studio.obs_bridge.control_client import ControlClient, ControlError

    try:
        return ControlClient.from_file()
    except ControlError as e:
        raise EngineError(str(e)) from None


def _cmd_status(args: argparse.Namespace) -> int:
    from sdv2_studio.obs_bridge.control_client import ControlError
    from sdv2_studio.obs_bridge.health import read_health
    from sdv2_studio.obs_bridge.output import CAMERA_KINDS, obs_virtualcam_active

    with _client(args) as client:
        info = client.info
        print(f"{info.summary()} at {client.settings.address}")
        print(f"image formats: {', '.join(info.image_formats)}")
        media = info.find_kind("ffmpeg_source")
        camera = next((k for k, _ in CAMERA_KINDS if info.find_kind(k)), None)
        print(f"stream output (media source): {'yes' if media else 'NO (ffmpeg_source missing)'}")
        print(f"virtual-camera output (device source): {camera or 'NO'}")
        active = obs_virtualcam_active(client)
        print("OBS virtual camera: " + ("not available on this machine" if active is None else
                                         "running" if active else "stopped"))
        scene = client.call("GetCurrentProgramScene").get("currentProgramSceneName")
        print(f"program scene: {scene}")
        health = read_health(client)
        print(health.line())
        for warning in health.warnings():
            print(f"warning: {warning}")
    try:
        from sdv2_studio.obs_bridge.control_client import ControlClient
        from sdv2_studio.obs_bridge.obs_script import format_status

        print(f"app: {format_status(ControlClient.from_file().status())}")
    except ControlError as e:
        print(f"app: {e}")
    return 0


def _cmd_sources(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print("scenes:")
        for name in client.scene_names():
            print(f"  {name}")
        print("inputs:")
        for name, kind in client.input_names():
            print(f"  {name}  ({kind})")
    return 0


def _parse_size(text: str | None) -> tuple[int, int] | None:
    from sdv2_studio.engine.io.frames import parse_size

    return parse_size(text)


def _presets(args: argparse.Namespace):
    from sdv2_studio.obs_bridge.preset_book import PresetBook

    if args.presets:
        return PresetBook.load(args.presets)
    book, problems = PresetBook.from_library()
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    return book


def _cmd_attach(args: argparse.Namespace) -> int:
    _need_obsws()
    from sdv2_studio.engine.api import EngineConfig
    from sdv2_studio.obs_bridge.bridge import BridgeConfig, ObsBridge
    from sdv2_studio.obs_bridge.control import ControlServer
    from sdv2_studio.obs_bridge.obs_script import format_status
    from sdv2_studio.obs_bridge.output import start_obs_virtualcam
    from sdv2_studio.obs_bridge.scenes import parse_scene_map, refuse_feedback

    if args.input and args.camera:
        raise EngineError("give --input (an OBS source) or --camera, not both")
    refuse_feedback(args.input, args.scene)  # again with OBS's scene contents once connected (ObsBridge.connect)
    camera = None if args.input else (args.camera or "camera:0")
    presets = _presets(args)
    given = {"steps": args.steps, "prompt": args.prompt or None}
    controls = Controls(**{k: v for k, v in given.items() if v is not None})
    engine_cfg = EngineConfig(model=args.model, device=args.device, dtype=args.dtype, size=_parse_size(args.size),
                              fit=args.fit, controls=controls, queue_frames=8)
    fallback = args.input if args.fallback is None else (args.fallback or None)
    cfg = BridgeConfig(scene=args.scene, capture=args.input, camera=camera, sink=args.sink, fps=args.fps,
                       port=args.udp_port, scene_presets=parse_scene_map(args.scene_presets or ""), fallback=fallback)
    bridge = ObsBridge(_settings(args), cfg, engine_cfg, presets)
    if args.preset:
        bridge.apply_preset(args.preset)
    server = None
    try:
        bridge.connect()
        print(f"{bridge.client.info.summary()} at {bridge.settings.address}", file=sys.stderr)
        bridge.start()
        att = bridge.attachment
        if att is not None:
            print(f"attached: scene {att.scene!r}, input {att.input_name!r} ({att.kind}) <- {bridge.output_url}"
                  f"{' (created)' if att.created else ' (updated)'}", file=sys.stderr)
        if args.obs_virtualcam:
            start_obs_virtualcam(bridge.client, args.scene, pyvirtualcam_backend=bridge.vcam_backend)
            print("OBS virtual camera started", file=sys.stderr)
        if not args.no_control:
            server = ControlServer(bridge, port=args.control_port).start()
            print(f"control API {server.url} (token in {server.control_path})", file=sys.stderr)
        print("streaming; press Ctrl-C to stop", file=sys.stderr)
        t0, last = time.monotonic(), 0.0
        while args.seconds is None or time.monotonic() - t0 < args.seconds:
            time.sleep(0.2)
            status = bridge.status()
            if status["state"] == "error":
                raise EngineError(status["error"] or "the stream stopped")
            if time.monotonic() - last >= args.status_every:
                last = time.monotonic()
                print(format_status(status), file=sys.stderr)
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        bridge.close()
    return 0


def _cmd_detach(args: argparse.Namespace) -> int:
    from sdv2_studio.obs_bridge.output import detach

    with _client(args) as client:
        print("removed" if detach(client, args.input_name) else f"no input named {args.input_name!r}")
    return 0


def _cmd_set_password(args: argparse.Namespace) -> int:
    import getpass

    from sdv2_studio.obs_bridge.settings import save_settings

    s = _settings(args)
    if sys.stdin is None or not sys.stdin.isatty():  # piped in: `printf %s "$PW" | sdv2 obs set-password`
        s.password = (sys.stdin.readline() if sys.stdin else "").rstrip("\r\n")
    else:
        s.password = getpass.getpass(f"obs-websocket password for {s.address} (Tools > WebSocket Server Settings > "
                                     "Show Connect Info): ")
    checked = None
    if s.password:
        try:
            from sdv2_studio.obs_bridge.client import check_login
        except ImportError:  # without obsws-python there is nothing to check with
            pass
        else:
            checked = check_login(s)  # a refused password raises: nothing is saved
    where = save_settings(s)
    print({"keyring": "saved in the OS keyring", "file": "saved in the settings file (readable by you only; "
           "install `keyring` to use the OS keyring)", "none": "password cleared"}[where]
          + {True: "; OBS accepted it", False: f"; not checked: OBS does not answer at {s.address}", None: ""}[checked])
    return 0


def _cmd_app(args: argparse.Namespace) -> int:
    import json

    from sdv2_studio.obs_bridge.control_client import ControlError

    client = _app_client()
    try:
        if args.action == "status":
            reply = client.status()
        elif args.action == "presets":
            reply = client.presets()
        elif args.action == "preset":
            if len(args.value) != 1:
                raise EngineError("name the preset: sdv2 obs app preset NAME")
            reply = client.apply_preset(args.value[0])
        elif args.action == "steps":
            if len(args.value) != 1 or not args.value[0].isdigit():
                raise EngineError(f"give the number of steps: sdv2 obs app steps 1-{MAX_STEPS}")
            reply = client.set_steps(int(args.value[0]))
        elif args.action == "prompt":
            if not args.value:
                raise EngineError("give the prompt: sdv2 obs app prompt TEXT, or a blend: TEXT:WEIGHT TEXT:WEIGHT")
            reply = client.set_prompts([(args.value[0], 1.0)] if len(args.value) == 1 else
                                       [parse_weighted_prompt(p) for p in args.value])
        elif args.action == "start":
            reply = client.start()
        else:
            reply = client.stop()
    except ControlError as e:
        raise EngineError(str(e)) from None
    print(json.dumps(reply, indent=2))
    return 0


def _cmd_install_plugin(args: argparse.Namespace) -> int:
    from sdv2_studio.obs_bridge.native_plugin import install_plugin

    module = install_plugin(args.prefix, build_dir=args.build_dir, log=lambda line: print(line, file=sys.stderr))
    print(f"installed {module}\nrestart OBS, then add Filters > StreamDiffusionV2 to a source (or the "
          "StreamDiffusionV2 source) and run: sdv2 run --source obs-filter:main --out obs-source:main")
    return 0


def _cmd_script_path(args: argparse.Namespace) -> int:
    from pathlib import Path

    print(Path(__file__).resolve().with_name("obs_script.py"))
    return 0


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="obs-websocket host (default: saved setting, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="obs-websocket port (default: saved setting, else 4455)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for OBS (default 5)")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``obs`` and its subcommands to the ``sdv2`` parser's subparsers."""
    obs = subparsers.add_parser("obs", help="OBS Studio: capture from OBS, send the styled stream into a scene")
    sub = obs.add_subparsers(dest="obs_command", required=True)

    s = sub.add_parser("status", help="OBS version, capabilities and health; the app's state")
    _connection_args(s)
    s.set_defaults(fn=_cmd_status)

    s = sub.add_parser("sources", help="list OBS scenes and inputs")
    _connection_args(s)
    s.set_defaults(fn=_cmd_sources)

    s = sub.add_parser("attach", help="stream styled video into an OBS scene (creates/updates the input)")
    _connection_args(s)
    s.add_argument("--scene", required=True, help="the OBS scene that gets the StreamDiffusionV2 input")
    s.add_argument("--input", default=None, help="OBS source or scene to capture (screenshots, JPEG)")
    s.add_argument("--camera", default=None,
                   help="read a camera directly instead (camera:NAME, /dev/videoN, test, a file); default camera:0")
    s.add_argument("--sink", default="udp",
                   help="udp (default), srt, vcam[:DEVICE] / vcam/BACKEND (virtual camera via pyvirtualcam), "
                        "spout[:NAME] (Windows) or syphon[:NAME] (macOS)")
    s.add_argument("--fps", type=float, default=15.0, help="capture and output frame rate (default 15)")
    s.add_argument("--udp-port", type=int, default=None, help="stream port (default: reuse the input's, else free)")
    s.add_argument("--model", default="auto", help="auto, tiny, passthrough (no model: check the wiring), or a "
                   "checkpoint path")
    s.add_argument("--size", default=None, help="model resolution WIDTHxHEIGHT (multiples of 16)")
    s.add_argument("--fit", choices=FIT_MODES, default="crop",
                   help="framing of the input: crop (fill, cut the edges; default) or bars (show it all)")
    s.add_argument("--steps", type=int, default=None, help=f"denoising steps 1-{MAX_STEPS} (default {Controls.steps})")
    s.add_argument("--prompt", default=None)
    s.add_argument("--preset", default=None, help="preset id to start with (see `sdv2 obs app presets`)")
    s.add_argument("--presets", default=None,
                   help='JSON file {"name": {"prompt": ..., "steps": 2}, ...} instead of the preset library')
    s.add_argument("--scene-presets", default=None, help="switch presets with the program scene: SCENE=PRESET,...")
    s.add_argument("--fallback", default=None, metavar="SOURCE",
                   help="OBS source shown in the styled source's place when the stream stops (default: the --input "
                        "source; '' only hides the styled source)")
    s.add_argument("--obs-virtualcam", action="store_true",
                   help="also start OBS's own virtual camera (for Zoom/Discord) on --scene")
    s.add_argument("--device", default="auto")
    s.add_argument("--dtype", default="auto")
    s.add_argument("--control-port", type=int, default=0, help="control API port on 127.0.0.1 (default: free)")
    s.add_argument("--no-control", action="store_true", help="do not open the control API")
    s.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    s.add_argument("--status-every", type=float, default=5.0, help="seconds between status lines")
    s.set_defaults(fn=_cmd_attach)

    s = sub.add_parser("detach", help="remove the StreamDiffusionV2 input from OBS")
    _connection_args(s)
    s.add_argument("--input-name", default="StreamDiffusionV2")
    s.set_defaults(fn=_cmd_detach)

    s = sub.add_parser("set-password", help="store the obs-websocket password (OS keyring when available); typed "
                       "at a prompt, or one line read from stdin when it is not a terminal")
    _connection_args(s)
    s.set_defaults(fn=_cmd_set_password)

    s = sub.add_parser("script-path", help="print the path of the OBS script (load it with Tools > Scripts)")
    s.set_defaults(fn=_cmd_script_path)

    s = sub.add_parser("install-plugin", help="build the native OBS plugin (source + filter) into OBS's plugin folder")
    s.add_argument("--prefix", default=None, help="plugin folder (default ~/.config/obs-studio/plugins)")
    s.add_argument("--build-dir", default=None, help="build here and keep it (default: a temporary folder)")
    s.set_defaults(fn=_cmd_install_plugin)

    s = sub.add_parser("app", help="drive the running app through its control API")
    s.add_argument("action", choices=["status", "presets", "preset", "steps", "prompt", "start", "stop"])
    s.add_argument("value", nargs="*", default=[], help="preset name, number of steps, or the prompt (several "
                   "TEXT:WEIGHT blend them, as sdv2 run --prompt)")
    s.set_defaults(fn=_cmd_app)
