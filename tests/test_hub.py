"""`engine.hub` against a real local HTTP server that speaks the parts of the Hugging Face hub API that the
installed huggingface_hub uses: `GET /api/models/{repo}/revision/{rev}?blobs=true` (our listing; also
snapshot_download's in huggingface_hub 1.x), `GET /api/models/{repo}/tree/{rev}?recursive=...` (snapshot_download's
listing in 2.x), `HEAD`/`GET` `/{repo}/resolve/{rev}/{path}` (git files served directly, LFS files as a 302 to a
"CDN" host with `X-Linked-Etag` = sha256 and `X-Linked-Size`), and Range requests. Nothing here touches
huggingface.co or the user's caches."""

from __future__ import annotations

import _thread
import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import sdv2_studio.engine.cli

pytest.importorskip("huggingface_hub")
hf_constants = pytest.importorskip("huggingface_hub.constants")
hf_utils = pytest.importorskip("huggingface_hub.utils")

from sdv2_studio.engine import hub  # noqa: E402
from sdv2_studio.engine.errors import EngineError  # noqa: E402
from sdv2_studio.engine.hub import cli as hub_cli  # noqa: E402
from sdv2_studio.engine.hub import fetch, transfer  # noqa: E402
from sdv2_studio.engine.models import (  # noqa: E402
    BASE_DIR,
    CAUSAL_DIR,
    ORIGINAL_DIR,
    base_parts,
    find_downloaded,
    models_dir,
    resolve_model,
)

SDV2 = "jerryfeng/StreamDiffusionV2"
BASE = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
ORIG = "Wan-AI/Wan2.1-T2V-1.3B"
DIFFUSERS = ["sdv2-1.3b", "wan2.1-1.3b-base"]  # the DiT with the diffusers base (the default set before)
LFS_SUFFIXES = (".pt", ".pth", ".safetensors", ".model")


def _bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def saved(obj, legacy: bool = False) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@functools.cache
def tiny_weights() -> dict[str, bytes]:
    """The tiny model's DiT, VAE and umT5 (Wan names, bf16) as the released .pt / .pth files hold them."""
    from sdv2_studio.engine.models import tiny_dit, tiny_vae
    from sdv2_studio.engine.text import tiny_text_encoder
    from test_text import wan_names

    te = tiny_text_encoder(text_dim=64, text_len=32, seed=5).model.state_dict()
    t5 = {k: v.bfloat16() for k, v in wan_names({k: v for k, v in te.items() if k != "encoder.embed_tokens.weight"})
          .items()}
    return {"dit": saved(tiny_dit().state_dict()), "vae": saved(tiny_vae().state_dict()), "t5": saved(t5)}


def fake_repos() -> dict[str, dict[str, bytes]]:
    """Small stand-ins with the real repos' paths (names of files not used by the engine are illustrative)."""
    return {
        ORIG: {
            "config.json": _json({"dim": 1536}),
            "diffusion_pytorch_model.safetensors": _bytes(10, 60_000),
            "Wan2.1_VAE.pth": tiny_weights()["vae"],
            "models_t5_umt5-xxl-enc-bf16.pth": tiny_weights()["t5"],
            "google/umt5-xxl/special_tokens_map.json": _json({}),
            "google/umt5-xxl/spiece.model": _bytes(11, 30_000),
            "google/umt5-xxl/tokenizer.json": _json({"version": "1.0"}),
            "google/umt5-xxl/tokenizer_config.json": _json({}),
        },
        SDV2: {
            "README.md": b"# StreamDiffusionV2\n",
            "wan_causal_dmd_v2v/model.pt": _bytes(1, 300_000),
            "wan_causal_dmd_v2v_14b/model.pt": _bytes(2, 50_000),
        },
        BASE: {
            "model_index.json": _json({"_class_name": "WanPipeline"}),
            "scheduler/scheduler_config.json": _json({"shift": 3.0}),
            "text_encoder/config.json": _json({"model_type": "umt5"}),
            "text_encoder/model.safetensors.index.json": _json({"weight_map": {}}),
            "text_encoder/model-00001-of-00002.safetensors": _bytes(3, 120_000),
            "text_encoder/model-00002-of-00002.safetensors": _bytes(4, 80_000),
            "tokenizer/special_tokens_map.json": _json({}),
            "tokenizer/spiece.model": _bytes(5, 40_000),
            "tokenizer/tokenizer.json": _json({"version": "1.0"}),
            "tokenizer/tokenizer_config.json": _json({}),
            "transformer/config.json": _json({"num_layers": 30}),
            "transformer/diffusion_pytorch_model.safetensors": _bytes(6, 90_000),
            "vae/config.json": _json({"z_dim": 16}),
            "vae/diffusion_pytorch_model.safetensors": _bytes(7, 100_000),
        },
    }


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 (a free port); LFS bodies come from http://localhost:PORT/cdn/..."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.commit = hashlib.sha1(b"commit-1").hexdigest()
        self.log: list[dict] = []
        self.cut_once: set[str] = set()  # "repo/path": send half the body, then drop the connection (once)
        self.corrupt: set[str] = set()  # "repo/path": serve other bytes than the advertised sha256
        self.stall: set[str] = set()  # "repo/path": send the headers of the body, then nothing
        self.later_listings: dict[str, dict[str, bytes]] = {}  # repo -> files added to every listing after the first
        self.listings = 0
        self.tokens: dict[str, str] = {}  # repo -> the only token that may read it (else 401)
        self.fail: dict[str, int] = {}  # repo -> HTTP status of its API answers
        self.lock = threading.Lock()
        self.closing = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                fake.handle(self, head=True)

            def do_GET(self):
                fake.handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # clients that give up (a stop, a cut) are normal
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    # ---- what the tests inspect
    def body_gets(self, name: str | None = None) -> list[dict]:
        """GETs that transfer file content (not the JSON API), optionally for one repo path."""
        return [r for r in self.log if r["method"] == "GET" and r["file"] and (name is None or r["file"] == name)]

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def content(self, repo: str, path: str) -> bytes:
        data = self.repos[repo][path]
        if f"{repo}/{path}" in self.corrupt:
            data = bytes(b ^ 0x5A for b in data)
        return data

    # ---- HTTP
    def send(self, h, code, headers=(), body=b"", head=False):
        h.send_response(code)
        for k, v in headers:
            h.send_header(k, v)
        if not any(k.lower() == "content-length" for k, _ in headers):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def handle(self, h, head):
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        entry = {"method": h.command, "path": path, "range": h.headers.get("Range"), "file": None,
                 "auth": h.headers.get("Authorization"), "host": h.headers.get("Host")}
        with self.lock:
            self.log.append(entry)
        if path.startswith("/api/models/"):
            return self.api(h, path[len("/api/models/"):], head)
        if path.startswith("/cdn/"):
            sha = path[len("/cdn/"):]
            for repo, files in self.repos.items():
                for name, data in files.items():
                    if hashlib.sha256(data).hexdigest() == sha:
                        entry["file"] = name
                        return self.serve(h, repo, name, head, [("ETag", f'"{sha}"')])
            return self.send(h, 404, head=head)
        for repo, files in self.repos.items():
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                rev, _, name = path[len(prefix):].partition("/")
                common = [("X-Repo-Commit", self.commit)]
                if rev not in ("main", self.commit):
                    return self.send(h, 404, [("X-Error-Code", "RevisionNotFound")], head=head)
                if name not in files:
                    return self.send(h, 404, [*common, ("X-Error-Code", "EntryNotFound")], head=head)
                data = files[name]
                if self.is_lfs(name):
                    sha = hashlib.sha256(data).hexdigest()
                    return self.send(h, 302, [*common, ("Location", f"http://localhost:{self.port}/cdn/{sha}"),
                                              ("ETag", f'"{git_blob_id(b"pointer " + data[:16])}"'),
                                              ("X-Linked-Etag", f'"{sha}"'), ("X-Linked-Size", str(len(data)))],
                                     head=head)
                entry["file"] = name
                return self.serve(h, repo, name, head, [*common, ("ETag", f'"{git_blob_id(data)}"')])
        self.send(h, 404, [("X-Error-Code", "RepoNotFound")], head=head)

    def api(self, h, rest, head):
        if "/tree/" in rest:
            repo, _, rev = rest.partition("/tree/")
        else:
            repo, _, rev = rest.partition("/revision/")
        if repo not in self.repos:
            return self.send(h, 404, [("X-Error-Code", "RepoNotFound")], _json({"error": "Repository not found"}),
                             head)
        if repo in self.fail:
            return self.send(h, self.fail[repo], [], _json({"error": "something broke"}), head)
        if repo in self.tokens and h.headers.get("Authorization") != f"Bearer {self.tokens[repo]}":
            return self.send(h, 401, [("X-Error-Code", "GatedRepo")], _json({"error": "Access restricted"}), head)
        with self.lock:
            self.listings += 1
            files = dict(self.repos[repo])
            if self.listings > 1:
                files.update(self.later_listings.get(repo, {}))
        entries = []
        for name, data in sorted(files.items()):
            lfs = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append((name, data, lfs if self.is_lfs(name) else None))
        if "/tree/" in rest:
            body = [{"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data),
                     **({"lfs": {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": 134}} if lfs else {})}
                    for name, data, lfs in entries]
        else:
            body = {"id": repo, "modelId": repo, "sha": self.commit, "private": False,
                    "siblings": [{"rfilename": name, "size": len(data), "blobId": git_blob_id(data),
                                  **({"lfs": lfs} if lfs else {})} for name, data, lfs in entries]}
        self.send(h, 200, [("Content-Type", "application/json")], _json(body), head)

    def serve(self, h, repo, name, head, headers):
        data = self.content(repo, name)
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes="):-1])
        key = f"{repo}/{name}"
        if start:
            headers = [*headers, ("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")]
        headers = [*headers, ("Content-Length", str(len(data) - start)), ("Accept-Ranges", "bytes")]
        if not head and (key in self.cut_once or key in self.stall):
            h.send_response(206 if start else 200)
            for k, v in headers:
                h.send_header(k, v)
            h.end_headers()
            if key in self.stall:  # hold the connection open, send nothing more
                h.wfile.flush()
                self.closing.wait(120)
                return None
            self.cut_once.discard(key)
            h.wfile.write(data[start: start + (len(data) - start) // 2])
            h.wfile.flush()
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return None
        return self.send(h, 206 if start else 200, headers, data[start:], head)


def clean_hub_env(monkeypatch, endpoint: str) -> None:
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "HF_HUB_ETAG_TIMEOUT",
                "HF_HUB_DOWNLOAD_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # read once at import by huggingface_hub
    hf_utils.close_session()  # a fresh client picks up this environment


@pytest.fixture
def fake_hub(monkeypatch):
    server = FakeHub(fake_repos())
    clean_hub_env(monkeypatch, server.url)
    yield server
    server.close()


@pytest.fixture
def deadline(monkeypatch):
    """Every request to the hub may wait one second (huggingface_hub read HF_HUB_*_TIMEOUT at import)."""
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base_files_wanted(repos) -> list[str]:
    return sorted(n for n in repos[BASE] if n == "model_index.json" or n.split("/")[0] in ("text_encoder", "tokenizer",
                                                                                            "vae"))


def run_cli(argv: list[str]) -> int:
    return sdv2_studio.engine.cli.main(argv)


def run_cli_process(argv: list[str], env: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess:
    """`sdv2 ...` in a fresh interpreter (huggingface_hub reads its settings from this environment at import)."""
    code = f"{prelude}\nimport sys\nfrom sdv2_studio.engine.cli import main\nsys.exit(main({argv!r}))"
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)


def messages(stderr: str) -> list[str]:
    """What the CLI wrote to stderr besides its progress lines ("[ 42%] ...")."""
    return [ln for ln in stderr.splitlines() if not ln.startswith("[")]


def test_catalogue_is_data_with_the_default_set():
    names = [it.name for it in hub.catalogue()]
    assert {"sdv2-1.3b", "wan2.1-1.3b-base", "sdv2-14b", "taehv"} <= set(names)
    assert [it.name for it in hub.default_items()] == ["sdv2-1.3b", "wan2.1-1.3b-original"]
    assert all(it.verified for it in hub.default_items())
    assert not hub.get_item("taehv").verified and "github" in hub.get_item("taehv").note
    assert hub.item_path("sdv2-1.3b", "/m") == Path("/m") / CAUSAL_DIR
    assert hub.item_path("wan2.1-1.3b-base", "/m") == Path("/m") / BASE_DIR
    assert hub.item_path("wan2.1-1.3b-original", "/m") == Path("/m") / ORIGINAL_DIR
    with pytest.raises(EngineError, match="unknown model 'nope': choose from sdv2-1.3b"):
        hub.get_item("nope")


def test_diffusers_download_layout_find_downloaded_and_noop(fake_hub):
    assert find_downloaded() is None
    assert hub.status("sdv2-1.3b") == hub.MISSING
    calls = []
    folders = hub.download(DIFFUSERS, progress=lambda msg, frac: calls.append((msg, frac)))
    root = models_dir()
    assert folders == [root / CAUSAL_DIR, root / BASE_DIR]

    repos = fake_repos()
    model = root / CAUSAL_DIR / "model.pt"
    assert sha256_file(model) == hashlib.sha256(repos[SDV2]["wan_causal_dmd_v2v/model.pt"]).hexdigest()
    for name in base_files_wanted(repos):
        assert (root / BASE_DIR / name).read_bytes() == repos[BASE][name], name
    # only what the engine needs: no transformer/, scheduler/, 14B or README
    assert not (root / BASE_DIR / "transformer").exists() and not (root / BASE_DIR / "scheduler").exists()
    assert not (root / "StreamDiffusionV2" / "wan_causal_dmd_v2v_14b").exists()
    assert find_downloaded() == (root / CAUSAL_DIR, root / BASE_DIR)
    assert hub.status("sdv2-1.3b") == hub.status("wan2.1-1.3b-base") == hub.DOWNLOADED
    assert hub.status("sdv2-14b") == hub.MISSING

    wanted = 1 + len(base_files_wanted(repos))
    assert len(fake_hub.body_gets()) == wanted == 12
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # monotonic, ends at 100 %
    assert any(m.startswith("downloading sdv2-1.3b (300.0 kB)") for m, _ in calls)
    assert any(m.startswith("downloading wan2.1-1.3b-base: ") for m, _ in calls)  # bytes from huggingface_hub's bar
    assert any(m == "verifying StreamDiffusionV2/wan_causal_dmd_v2v/model.pt (sha256)" for m, _ in calls)

    # a second download transfers no file data: one metadata call per repo, no HEAD, no GET of a file
    n = len(fake_hub.log)
    hub.download(DIFFUSERS)
    again = fake_hub.log[n:]
    assert [(r["method"], r["path"]) for r in again] == [("GET", f"/api/models/{SDV2}/revision/main"),
                                                          ("GET", f"/api/models/{BASE}/revision/main")]


def test_resume_after_a_dropped_connection(fake_hub, monkeypatch):
    # huggingface_hub writes what it receives in DOWNLOAD_CHUNK_SIZE pieces (10 MB) and resumes from the last whole
    # piece; 32 kB pieces make that visible with a 300 kB file
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 32768)
    key = "wan_causal_dmd_v2v/model.pt"
    fake_hub.cut_once.add(f"{SDV2}/{key}")
    (folder,) = hub.download(["sdv2-1.3b"])
    gets = fake_hub.body_gets(key)
    # the first GET is cut after 150 000 of 300 000 bytes; the rest comes with a Range request from 4 x 32768
    assert [g["range"] for g in gets] == [None, "bytes=131072-"]
    assert sha256_file(folder / "model.pt") == hashlib.sha256(fake_repos()[SDV2][key]).hexdigest()
    assert hub.status("sdv2-1.3b") == hub.DOWNLOADED
    # the LFS body came from the "CDN" host, without the token (none set here) and after a 302 from the hub
    assert all(g["host"] == f"localhost:{fake_hub.port}" for g in gets)


class Cancelled(Exception):
    pass


STOP_AT = "text_encoder/model-00002-of-00002.safetensors"


def stop_inside_the_second_shard(monkeypatch, stop):
    """One file at a time, 16 kB pieces: `stop()` runs when the base's bytes reach the middle of STOP_AT."""
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 16384)
    monkeypatch.setattr(fetch, "_WORKERS", 1)
    monkeypatch.setattr(transfer.Transfer, "interval", 0.0)
    repos = fake_repos()
    before = sum(len(repos[BASE][n]) for n in base_files_wanted(repos) if n < STOP_AT)
    prefix = "downloading wan2.1-1.3b-base: "
    seen = []

    def progress(msg, frac):
        seen.append(msg)
        if msg.startswith(prefix) and "stopped" not in seen:
            number, unit = msg[len(prefix):].split()[:2]
            if float(number) * {"B": 1, "kB": 1000}[unit] > before + 16384:
                seen.append("stopped")
                stop()

    return progress, seen


def check_stopped_then_completed(fake_hub):
    root = models_dir()
    assert hub.status("sdv2-1.3b") == hub.DOWNLOADED
    assert hub.status("wan2.1-1.3b-base") == hub.PARTIAL
    assert find_downloaded() is None
    repos = fake_repos()
    present = {n for n in base_files_wanted(repos) if (root / BASE_DIR / n).is_file()}
    assert present == {n for n in base_files_wanted(repos) if n < STOP_AT}  # files before the cut one, whole
    assert all((root / BASE_DIR / n).read_bytes() == repos[BASE][n] for n in present)
    n = len(fake_hub.log)

    hub.download(DIFFUSERS)
    again = [r for r in fake_hub.log[n:] if r["method"] == "GET" and r["file"]]
    assert sorted(r["file"] for r in again) == sorted(set(base_files_wanted(repos)) - present)
    assert [r["range"] for r in again if r["file"] == STOP_AT] == [None]  # the cut file starts over
    assert find_downloaded() == (root / CAUSAL_DIR, root / BASE_DIR)
    for name in base_files_wanted(repos):
        assert (root / BASE_DIR / name).read_bytes() == repos[BASE][name]


def test_cancel_from_progress_is_completed_by_the_next_run(fake_hub, monkeypatch):
    # the app's cancel: an exception from the progress callback, raised in one of huggingface_hub's threads
    def cancel():
        raise Cancelled

    progress, seen = stop_inside_the_second_shard(monkeypatch, cancel)
    with pytest.raises(Cancelled):
        hub.download(DIFFUSERS, progress=progress)
    assert seen.count("stopped") == 1 and seen[-1] == "stopped"  # nothing reported after the cancel
    check_stopped_then_completed(fake_hub)


def test_ctrl_c_stops_the_transfers(fake_hub, monkeypatch, capsys):
    # Ctrl-C arrives in the main thread while huggingface_hub's threads download: they stop at their next piece
    stopped = threading.Event()
    stop = transfer.Transfer.stop
    monkeypatch.setattr(transfer.Transfer, "stop", lambda self, e: (stop(self, e), stopped.set()))

    def ctrl_c():
        _thread.interrupt_main()
        assert stopped.wait(60)  # the main thread has stopped the transfer; this piece is the last one

    progress, _ = stop_inside_the_second_shard(monkeypatch, ctrl_c)
    monkeypatch.setattr(hub_cli, "_cli_progress", lambda: progress)
    assert run_cli(["models", "download", *DIFFUSERS, "--yes"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "sdv2: interrupted"
    check_stopped_then_completed(fake_hub)


def test_corrupted_download_is_rejected_and_deleted(fake_hub):
    fake_hub.corrupt.add(f"{SDV2}/wan_causal_dmd_v2v/model.pt")
    with pytest.raises(EngineError) as err:
        hub.download(["sdv2-1.3b"])
    msg = str(err.value)
    assert "\n" not in msg and "is corrupted (300000 bytes" in msg and "sdv2 models download sdv2-1.3b" in msg
    assert not (models_dir() / CAUSAL_DIR / "model.pt").exists()
    assert hub.status("sdv2-1.3b") != hub.DOWNLOADED

    fake_hub.corrupt.clear()
    (folder,) = hub.download(["sdv2-1.3b"])
    assert (folder / "model.pt").read_bytes() == fake_repos()[SDV2]["wan_causal_dmd_v2v/model.pt"]


def test_damaged_file_on_disk_is_replaced(fake_hub):
    (folder,) = hub.download(["sdv2-1.3b"])
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    assert hub.status("sdv2-1.3b") == hub.PARTIAL  # no longer what was verified (its mtime changed)
    # so its content is hashed, found wrong and downloaded again
    n = len(fake_hub.body_gets())
    hub.download(["sdv2-1.3b"])
    assert len(fake_hub.body_gets()) == n + 1
    assert (folder / "model.pt").read_bytes() == data


def test_hub_update_fetches_only_changed_files(fake_hub):
    hub.download(DIFFUSERS)
    n = len(fake_hub.log)
    old = fake_hub.repos[BASE]["vae/config.json"]
    fake_hub.repos[BASE]["vae/config.json"] = old.replace(b"16", b"32")  # same size, new git blob
    fake_hub.repos[SDV2]["wan_causal_dmd_v2v/model.pt"] = _bytes(9, 300_000)  # same size, new LFS sha256
    fake_hub.commit = hashlib.sha1(b"commit-2").hexdigest()
    hub.download(DIFFUSERS)
    assert sorted(r["file"] for r in fake_hub.log[n:] if r["method"] == "GET" and r["file"]) == [
        "vae/config.json", "wan_causal_dmd_v2v/model.pt"]
    root = models_dir()
    assert (root / BASE_DIR / "vae/config.json").read_bytes() == fake_hub.repos[BASE]["vae/config.json"]
    assert (root / CAUSAL_DIR / "model.pt").read_bytes() == _bytes(9, 300_000)


def test_files_copied_by_hand_are_checked_not_downloaded(fake_hub):
    model = models_dir() / CAUSAL_DIR / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(fake_repos()[SDV2]["wan_causal_dmd_v2v/model.pt"])
    assert hub.status("sdv2-1.3b") == hub.DOWNLOADED  # what the engine needs is there
    msgs = []
    hub.download(["sdv2-1.3b"], progress=lambda m, f: msgs.append(m))
    assert fake_hub.body_gets() == []  # its sha256 matched the hub's
    assert "checking the existing StreamDiffusionV2/wan_causal_dmd_v2v/model.pt (sha256)" in msgs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_is_one_line(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(EngineError) as err:
        hub.download()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("cannot reach the model hub (http://127.0.0.1:")
    assert "check your connection or copy the files to " + str(models_dir() / CAUSAL_DIR) in msg


def test_unreachable_hub_is_fine_when_already_downloaded(fake_hub, monkeypatch):
    hub.download(["sdv2-1.3b"])
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    msgs = []
    assert hub.download(["sdv2-1.3b"], progress=lambda m, f: msgs.append(m)) == [models_dir() / CAUSAL_DIR]
    assert any("already downloaded" in m for m in msgs)
    with pytest.raises(EngineError, match="cannot reach the model hub"):
        hub.download(["wan2.1-1.3b-base"])


def test_offline_env_is_one_line(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineError, match=r"^cannot reach the model hub \(HF_HUB_OFFLINE is set\): unset"):
        hub.download(["sdv2-1.3b"])
    assert fake_hub.log == []


def test_not_enough_disk_space(fake_hub, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    repos = fake_repos()
    need = len(repos[SDV2]["wan_causal_dmd_v2v/model.pt"]) + sum(len(repos[BASE][n]) for n in base_files_wanted(repos))
    assert hub.format_size(need) == "640.1 kB"  # exact sizes from the hub's metadata, not the catalogue's estimates
    with pytest.raises(EngineError, match=r"^not enough disk space in .*: the download needs 640\.1 kB, 1\.0 kB is "
                                          r"free; free some space or pass --dir FOLDER"):
        hub.download(DIFFUSERS)
    assert fake_hub.body_gets() == []


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX file-size limit stands in for a full disk")
def test_disk_full_while_writing_is_one_line(fake_hub):
    # the OS refuses to write past 100 kB (RLIMIT_FSIZE: EFBIG, as a full disk refuses with ENOSPC)
    limit = "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n" \
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))"
    res = run_cli_process(["models", "download", "sdv2-1.3b", "--yes"], {"HF_ENDPOINT": fake_hub.url},
                          prelude=limit)
    assert res.returncode == 2, res.stderr
    err = messages(res.stderr)
    assert len(err) == 1 and err[0].startswith(f"sdv2: error: cannot write sdv2-1.3b to {models_dir()} (File too "
                                               "large): free some space or pass --dir FOLDER"), res.stderr
    assert hub.status("sdv2-1.3b") != hub.DOWNLOADED


def test_token_and_dir(fake_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    target = tmp_path / "elsewhere"
    (folder,) = hub.download(["sdv2-14b"], root=target)
    assert folder == target / "StreamDiffusionV2" / "wan_causal_dmd_v2v_14b"
    assert (folder / "model.pt").read_bytes() == fake_repos()[SDV2]["wan_causal_dmd_v2v_14b/model.pt"]
    assert hub.status("sdv2-14b", target) == hub.DOWNLOADED and hub.status("sdv2-14b") == hub.MISSING
    hub_side = [r for r in fake_hub.log if r["host"] == f"127.0.0.1:{fake_hub.port}"]
    assert hub_side and all(r["auth"] == "Bearer hf_test_token" for r in hub_side)
    assert all(r["auth"] is None for r in fake_hub.log if r["host"].startswith("localhost"))  # not sent to the CDN


@pytest.mark.parametrize("case, expected", [
    ("unknown", r"the hub has no repository madebyollin/taehv \(HTTP 404\) \(UNVERIFIED"),
    ("token", r"the hub refused access to madebyollin/taehv \(HTTP 401\): accept its terms on the hub and set "
              r"HF_TOKEN"),
    ("broken", r"the model hub failed with HTTP 500 while fetching taehv: try again later"),
])
def test_hub_refusals_are_one_line(fake_hub, capsys, case, expected):
    if case != "unknown":
        fake_hub.repos["madebyollin/taehv"] = {"taew2_1.pth": _bytes(8, 1000)}
    if case == "token":
        fake_hub.tokens["madebyollin/taehv"] = "secret"
    if case == "broken":
        fake_hub.fail["madebyollin/taehv"] = 500
    with pytest.raises(EngineError, match="^" + expected) as err:
        hub.download(["taehv"])
    capsys.readouterr()
    assert run_cli(["models", "download", "taehv"]) == 2
    assert messages(capsys.readouterr().err) == [f"sdv2: error: {err.value}"]


def outside_target(name: str) -> Path:
    """Where `name` would land if it were joined to the base folder without a check."""
    return Path(os.path.normpath(models_dir() / BASE_DIR / name.replace("\\", "/")))


@pytest.mark.parametrize("name, why", [
    ("text_encoder/../../../victim.txt", "a '..', '.' or empty path segment"),
    ("ABSOLUTE", "an absolute path"),
    ("text_encoder\\..\\..\\..\\victim.txt", "a backslash, colon or control character"),
])
def test_unsafe_names_from_the_hub_touch_nothing(fake_hub, capsys, name, why):
    victim = models_dir().parent / "victim.txt"
    name = str(victim) if name == "ABSOLUTE" else name
    assert outside_target(name) == victim
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"the user's file")
    fake_hub.repos[BASE][name] = b"overwritten"

    assert run_cli(["models", "download", *DIFFUSERS]) == 2
    assert messages(capsys.readouterr().err) == [
        f"sdv2: error: the hub lists an unsafe file name {name!r} in {BASE} ({why}); nothing was downloaded: check "
        "HF_ENDPOINT and any proxy in front of the hub"]
    assert victim.read_bytes() == b"the user's file"
    assert fake_hub.body_gets() == [] and not (models_dir() / BASE_DIR / "text_encoder").exists()


def test_unsafe_commit_id_from_the_hub_is_refused(fake_hub):
    fake_hub.commit = "../../../victim"  # huggingface_hub uses the commit in file paths
    with pytest.raises(EngineError, match=r"^the hub's answer about jerryfeng/StreamDiffusionV2 has no valid commit"):
        hub.download(["sdv2-1.3b"])
    assert fake_hub.body_gets() == []


def test_names_in_later_listings_are_never_fetched(fake_hub):
    # a hub that answers our (checked) listing, then lists more in the one snapshot_download makes: only the exact
    # names we checked are downloaded
    victim = models_dir().parent / "victim.txt"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"the user's file")
    fake_hub.later_listings[SDV2] = {"wan_causal_dmd_v2v/../../../victim.txt": b"overwritten",
                                     "wan_causal_dmd_v2v/extra.pt": b"more"}
    (folder,) = hub.download(["sdv2-1.3b"])
    assert fake_hub.listings >= 2  # snapshot_download listed the repo again and saw the extra names
    assert victim.read_bytes() == b"the user's file"
    assert [p.name for p in folder.iterdir()] == ["model.pt"]


def test_a_damaged_record_is_ignored(fake_hub):
    (folder,) = hub.download(["sdv2-1.3b"])
    record = folder.parent / ".cache" / "sdv2" / "sdv2-1.3b.json"
    data = json.loads(record.read_text())
    data["files"]["../../victim.txt"] = {"size": 1, "digest": "0" * 64, "mtime_ns": 1}
    record.write_text(json.dumps(data))
    assert hub.status("sdv2-1.3b") == hub.DOWNLOADED  # from the files present, as if there were no record
    record.write_text("{not json")
    assert hub.status("sdv2-1.3b") == hub.DOWNLOADED
    hub.download(["sdv2-1.3b"])  # hashes the file again, rewrites the record, fetches nothing
    assert len(fake_hub.body_gets()) == 1 and json.loads(record.read_text())["files"].keys() == {
        "wan_causal_dmd_v2v/model.pt"}


class SilentHub:
    """Accepts connections, reads nothing, answers nothing."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        with contextlib.suppress(OSError):
            while True:
                self.conns.append(self.sock.accept()[0])

    def close(self):
        for c in [*self.conns, self.sock]:
            c.close()


@pytest.mark.timeout(300)
def test_silent_hub_is_one_line_after_the_deadline(tmp_path):
    silent = SilentHub()
    try:
        res = run_cli_process(["models", "download", "--dir", str(tmp_path / "m")],
                              {"HF_ENDPOINT": silent.url, "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1"})
    finally:
        silent.close()
    assert res.returncode == 2
    assert messages(res.stderr) == [
        f"sdv2: error: the model hub ({silent.url}) did not answer within 1 s: check your connection or proxy "
        f"(HF_HUB_DOWNLOAD_TIMEOUT sets the deadline), or copy the files to {tmp_path / 'm' / CAUSAL_DIR}"]


@pytest.mark.timeout(300)
def test_stalled_transfer_is_one_line_after_the_deadline(fake_hub, deadline):
    # the hub lists the files, then the body of one never comes: huggingface_hub's bounded retries, then one line
    fake_hub.stall.add(f"{SDV2}/wan_causal_dmd_v2v/model.pt")
    with pytest.raises(EngineError, match=r"^the model hub \(.*\) did not answer within 1 s: check your connection"):
        hub.download(["sdv2-1.3b"])
    assert hub.status("sdv2-1.3b") != hub.DOWNLOADED


def test_status_of_files_copied_by_hand(tmp_path):
    root = tmp_path / "models"
    assert hub.status("wan2.1-1.3b-base", root) == hub.MISSING
    base = root / BASE_DIR
    (base / "vae").mkdir(parents=True)
    (base / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert hub.status("wan2.1-1.3b-base", root) == hub.PARTIAL
    for name in ("text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer.json"):
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(b"{}")
    assert hub.status("wan2.1-1.3b-base", root) == hub.DOWNLOADED
    assert hub.local_size("wan2.1-1.3b-base", root) == 7


def test_register_cli_adds_models_command():
    parser = argparse.ArgumentParser(prog="sdv2")
    hub.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", "download", "sdv2-1.3b", "--dir", "D"])
    assert args.items == ["sdv2-1.3b"] and args.dir == "D" and args.fn is hub_cli._cmd_download
    assert parser.parse_args(["models", "list"]).fn is hub_cli._cmd_list
    assert parser.parse_args(["models", "path"]).item is None


def test_cli_list_path_download(fake_hub, capsys, tmp_path):
    assert run_cli(["models", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["ITEM", "STATUS", "SIZE", "DEFAULT", "PATH"]
    row = {ln.split()[0]: ln.split() for ln in lines[1:6]}
    assert row["sdv2-1.3b"][1:3] == ["missing", "unknown"]
    assert row["wan2.1-1.3b-base"][1:5] == ["missing", "~23.3", "GB", "no"]
    assert row["wan2.1-1.3b-original"][1:5] == ["missing", "~11.9", "GB", "yes"]
    assert "taehv*" in row
    assert f"models folder: {models_dir()}" in out

    assert run_cli(["models", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(models_dir())
    assert run_cli(["models", "path", "sdv2-1.3b"]) == 0
    assert capsys.readouterr().out.strip() == str(models_dir() / CAUSAL_DIR)

    assert run_cli(["models", "download", "--yes"]) == 0
    cap = capsys.readouterr()
    assert "sdv2-1.3b: downloaded in" in cap.out and "wan2.1-1.3b-original: downloaded in" in cap.out
    assert "[100%]" in cap.err and "Traceback" not in cap.err
    assert run_cli(["models", "list"]) == 0
    row = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()[1:6]}
    assert row["sdv2-1.3b"][1:4] == ["downloaded", "300.0", "kB"]

    other = tmp_path / "other"
    assert run_cli(["models", "download", "sdv2-14b", "--dir", str(other), "--yes"]) == 0
    assert f"set SDV2_MODELS={other}" in capsys.readouterr().out

    assert run_cli(["models", "download", "bogus"]) == 2
    assert capsys.readouterr().err.startswith("sdv2: error: unknown model 'bogus'")


def test_cli_progress_without_a_terminal():
    buf = io.StringIO()
    show = hub_cli._cli_progress(buf)
    for i in range(101):
        show(f"downloading a/b.pt: {i} kB of 100 kB", i / 100)
    lines = buf.getvalue().splitlines()
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("[100%]")


# ---- the smallest complete set, its sizes, the question before downloading, --link


class Terminal(io.StringIO):
    """stdin on a terminal, with the user's answers."""

    def isatty(self):
        return True


def plan_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("  ") or ln.startswith("total ")]


SMALLEST = [f"StreamDiffusionV2/{n}" for n in ["wan_causal_dmd_v2v/model.pt"]] + [
    f"Wan2.1-T2V-1.3B/{n}" for n in ["Wan2.1_VAE.pth", "google/umt5-xxl/special_tokens_map.json",
                                     "google/umt5-xxl/spiece.model", "google/umt5-xxl/tokenizer.json",
                                     "google/umt5-xxl/tokenizer_config.json", "models_t5_umt5-xxl-enc-bf16.pth"]]


def size_of(local_name: str, repos) -> int:
    folder, rel = local_name.split("/", 1)
    return len(repos[SDV2 if folder == "StreamDiffusionV2" else ORIG][rel])


def test_smallest_set_with_sizes_then_yes_downloads_a_loadable_folder(fake_hub, capsys, monkeypatch):
    fake_hub.repos[SDV2]["wan_causal_dmd_v2v/model.pt"] = tiny_weights()["dit"]  # a real (tiny) causal checkpoint
    repos = fake_hub.repos
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # piped: --yes decides
    assert run_cli(["models", "download", "--yes"]) == 0
    lines = plan_lines(capsys.readouterr().out)
    # every file of the bf16 original release's base (not the diffusers fp32 encoder, not the release's own DiT),
    # with its size from the hub's listing
    assert lines[:-1] == [f"  {n}  {hub.format_size(size_of(n, repos))}  download" for n in SMALLEST]
    total = hub.format_size(sum(size_of(n, repos) for n in SMALLEST))
    assert lines[-1].startswith(f"total {total}: download {total}, link 0 B (no copy), present 0 B; ")
    assert sorted(r["file"] for r in fake_hub.body_gets()) == sorted(n.split("/", 1)[1] for n in SMALLEST)

    root = models_dir()
    parts = base_parts(root / ORIGINAL_DIR)
    assert parts is not None and parts.layout == "wan"
    m = resolve_model(str(root / CAUSAL_DIR / "model.pt"))  # the base is found beside the checkpoint
    assert (m.base, m.vae_file, m.text_file, m.tokenizer) == (
        root / ORIGINAL_DIR, root / ORIGINAL_DIR / "Wan2.1_VAE.pth",
        root / ORIGINAL_DIR / "models_t5_umt5-xxl-enc-bf16.pth", root / ORIGINAL_DIR / "google" / "umt5-xxl")
    assert m.config.name == "tiny"
    assert find_downloaded() == (root / CAUSAL_DIR, root / ORIGINAL_DIR)  # what "auto" runs (sdv2 run, the app)
    assert hub.status("wan2.1-1.3b-original") == hub.DOWNLOADED

    # nothing left to download: no question, no --yes needed
    n = len(fake_hub.body_gets())
    assert run_cli(["models", "download"]) == 0
    assert plan_lines(capsys.readouterr().out)[-1].startswith(f"total {total}: download 0 B, link 0 B (no copy), "
                                                              f"present {total}; ")
    assert len(fake_hub.body_gets()) == n


def test_the_question_before_downloading(fake_hub, capsys, monkeypatch):
    need = hub.format_size(sum(size_of(n, fake_hub.repos) for n in SMALLEST))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped, without --yes: one line, nothing fetched
    assert run_cli(["models", "download"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and messages(cap.err) == [
        f"sdv2: error: the download of {need} needs a yes: pass --yes (stdin is not a terminal)"]
    assert fake_hub.body_gets() == []

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))  # a terminal: the plan, then the question
    assert run_cli(["models", "download"]) == 1
    out = capsys.readouterr().out
    assert len(plan_lines(out)) == len(SMALLEST) + 1 and out.rstrip().endswith(
        f"download {need}? [y/N] nothing was downloaded")
    assert fake_hub.body_gets() == [] and hub.status("wan2.1-1.3b-original") == hub.MISSING
    monkeypatch.setattr(sys, "stdin", Terminal(""))  # Ctrl-D at the question: no
    assert run_cli(["models", "download"]) == 1 and "nothing was downloaded" in capsys.readouterr().out
    assert fake_hub.body_gets() == []

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert run_cli(["models", "download"]) == 0
    assert hub.status("sdv2-1.3b") == hub.status("wan2.1-1.3b-original") == hub.DOWNLOADED


def test_not_enough_disk_space_is_one_line_before_the_question(fake_hub, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert run_cli(["models", "download"]) == 2
    cap = capsys.readouterr()
    need = hub.format_size(sum(size_of(n, fake_hub.repos) for n in SMALLEST))
    assert cap.out == "" and messages(cap.err) == [
        f"sdv2: error: not enough disk space in {models_dir()}: the download needs {need}, 1.0 kB is free; free some "
        "space or pass --dir FOLDER on another disk"]


def comfy_folder(tmp_path: Path) -> Path:
    """A ComfyUI models/ folder holding the StreamDiffusionV2 DiT and the Wan2.1 VAE (not the bf16 umT5)."""
    comfy = tmp_path / "ComfyUI" / "models"
    for sub in ("diffusion_models", "vae", "text_encoders", "loras"):
        (comfy / sub).mkdir(parents=True)
    (comfy / "diffusion_models" / "model.pt").write_bytes(tiny_weights()["dit"])
    (comfy / "vae" / "Wan2.1_VAE.pth").write_bytes(tiny_weights()["vae"])
    (comfy / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors").write_bytes(_bytes(12, 5000))
    return comfy


def test_link_a_comfyui_folder_downloads_only_the_rest(fake_hub, capsys, tmp_path):
    fake_hub.repos[SDV2]["wan_causal_dmd_v2v/model.pt"] = tiny_weights()["dit"]
    comfy = comfy_folder(tmp_path)
    before = {p: p.read_bytes() for p in comfy.rglob("*") if p.is_file()}
    assert run_cli(["models", "download", "--yes", "--link", str(comfy)]) == 0
    lines = plan_lines(capsys.readouterr().out)
    root = models_dir()
    dit, vae = root / CAUSAL_DIR / "model.pt", root / ORIGINAL_DIR / "Wan2.1_VAE.pth"
    assert f"  StreamDiffusionV2/wan_causal_dmd_v2v/model.pt  3.9 MB  link -> {comfy / 'diffusion_models/model.pt'}" \
        in lines
    assert dit.is_symlink() and dit.resolve() == (comfy / "diffusion_models" / "model.pt").resolve()
    assert vae.is_symlink() and vae.resolve() == (comfy / "vae" / "Wan2.1_VAE.pth").resolve()
    # only what the folder lacks came from the hub; the user's files are untouched and not copied
    assert sorted(r["file"] for r in fake_hub.body_gets()) == sorted(
        n.split("/", 1)[1] for n in SMALLEST if not n.endswith(("model.pt", "Wan2.1_VAE.pth")))
    assert {p: p.read_bytes() for p in comfy.rglob("*") if p.is_file()} == before
    assert not (root / ORIGINAL_DIR / "models_t5_umt5-xxl-enc-bf16.pth").is_symlink()
    assert hub.status("sdv2-1.3b") == hub.status("wan2.1-1.3b-original") == hub.DOWNLOADED
    assert resolve_model(str(dit)).vae_file == vae

    # again: nothing fetched, nothing hashed, the links kept
    n = len(fake_hub.body_gets())
    assert run_cli(["models", "download", "--link", str(comfy)]) == 0
    assert len(fake_hub.body_gets()) == n and dit.is_symlink() and vae.is_symlink()


def test_link_skips_a_file_of_the_right_name_but_the_wrong_kind(fake_hub, capsys, tmp_path):
    fake_hub.repos[SDV2]["wan_causal_dmd_v2v/model.pt"] = tiny_weights()["dit"]
    comfy = comfy_folder(tmp_path)
    # a text encoder named model.pt, exactly the size of the hub's DiT
    wrong = comfy / "diffusion_models" / "model.pt"
    t5 = torch_load(tiny_weights()["t5"])
    pad = len(tiny_weights()["dit"]) - len(saved(t5, legacy=True))
    for _ in range(5):  # pickle's length fields grow with the pad: settle on the exact size
        data = saved({**t5, "pad": torch_zeros(pad)}, legacy=True)
        pad -= len(data) - len(tiny_weights()["dit"])
    assert len(data) == len(tiny_weights()["dit"])
    wrong.write_bytes(data)
    (comfy / "vae" / "Wan2.1_VAE.pth").unlink()
    (comfy / "vae" / "Wan2.1_VAE.pth").symlink_to(tmp_path / "gone.pth")  # a broken link: not followed

    assert run_cli(["models", "download", "--yes", "--link", str(comfy)]) == 0
    lines = plan_lines(capsys.readouterr().out)
    assert f"  not linked: {wrong} is a text encoder, not a DiT" in lines
    assert f"  not linked: {comfy / 'vae' / 'Wan2.1_VAE.pth'} is a broken link" in lines
    root = models_dir()
    for path in (root / CAUSAL_DIR / "model.pt", root / ORIGINAL_DIR / "Wan2.1_VAE.pth"):
        assert path.is_file() and not path.is_symlink()
    assert (root / CAUSAL_DIR / "model.pt").read_bytes() == tiny_weights()["dit"] and wrong.read_bytes() == data
    assert len(fake_hub.body_gets()) == len(SMALLEST)


def test_link_outside_the_folder_and_a_broken_link_in_the_models_folder(fake_hub, capsys, tmp_path):
    comfy = comfy_folder(tmp_path)
    outside = tmp_path / "elsewhere" / "Wan2.1_VAE.pth"
    outside.parent.mkdir()
    outside.write_bytes(tiny_weights()["vae"])
    (comfy / "vae" / "Wan2.1_VAE.pth").unlink()
    (comfy / "vae" / "Wan2.1_VAE.pth").symlink_to(outside)
    assert run_cli(["models", "download", "wan2.1-1.3b-original", "--yes", "--link", str(comfy)]) == 0
    assert f"  not linked: {comfy / 'vae' / 'Wan2.1_VAE.pth'} leads outside {comfy}" in plan_lines(
        capsys.readouterr().out)
    vae = models_dir() / ORIGINAL_DIR / "Wan2.1_VAE.pth"
    assert not vae.is_symlink() and outside.read_bytes() == tiny_weights()["vae"]

    vae.unlink()
    vae.symlink_to(tmp_path / "unmounted" / "Wan2.1_VAE.pth")  # a link the user made to a disk not mounted
    assert run_cli(["models", "download", "wan2.1-1.3b-original", "--yes"]) == 2
    assert messages(capsys.readouterr().err) == [
        f"sdv2: error: {vae} is a link to {tmp_path / 'unmounted' / 'Wan2.1_VAE.pth'}, which is missing (a disk not "
        "mounted?): fix or remove the link"]
    assert vae.is_symlink()
    assert run_cli(["models", "download", "--link", str(tmp_path / "nope")]) == 2
    assert messages(capsys.readouterr().err) == [
        f"sdv2: error: --link {tmp_path / 'nope'}: no such folder; pass the folder that holds your model files (for "
        "example ComfyUI/models)"]


def torch_load(data: bytes) -> dict:
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def torch_zeros(n: int):
    import torch

    return torch.zeros(n, dtype=torch.uint8)
