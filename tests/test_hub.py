"""`engine.hub` against a real local HTTP server that speaks the parts of the Hugging Face hub API that the
installed huggingface_hub uses: `GET /api/models/{repo}/revision/{rev}?blobs=true`, `HEAD`/`GET`
`/{repo}/resolve/{rev}/{path}` (git files served directly, LFS files as a 302 to a "CDN" host with `X-Linked-Etag`
= sha256 and `X-Linked-Size`), and Range requests. Nothing here touches huggingface.co or the user's caches."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import random
import socket
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import sdv2_studio.engine.cli

hf = pytest.importorskip("huggingface_hub")
hf_constants = pytest.importorskip("huggingface_hub.constants")
hf_utils = pytest.importorskip("huggingface_hub.utils")

from sdv2_studio.engine import hub  # noqa: E402
from sdv2_studio.engine.errors import EngineError  # noqa: E402
from sdv2_studio.engine.models import BASE_DIR, CAUSAL_DIR, find_downloaded, models_dir  # noqa: E402

SDV2 = "jerryfeng/StreamDiffusionV2"
BASE = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
LFS_SUFFIXES = (".pt", ".pth", ".safetensors", ".model")


def _bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def fake_repos() -> dict[str, dict[str, bytes]]:
    """Small stand-ins with the real repos' paths (names of files not used by the engine are illustrative)."""
    return {
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
        self.lock = threading.Lock()
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
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
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
        repo, _, rev = rest.partition("/revision/")
        if repo not in self.repos:
            return self.send(h, 404, [("X-Error-Code", "RepoNotFound")], _json({"error": "Repository not found"}),
                             head)
        siblings = []
        for name, data in sorted(self.repos[repo].items()):
            sib = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if self.is_lfs(name):
                sib["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(sib)
        body = _json({"id": repo, "modelId": repo, "sha": self.commit, "private": False, "siblings": siblings})
        self.send(h, 200, [("Content-Type", "application/json")], body, head)

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
        if not head and not start and key in self.cut_once:
            self.cut_once.discard(key)
            h.send_response(200)
            for k, v in headers:
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return None
        return self.send(h, 206 if start else 200, headers, data[start:], head)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    server = FakeHub(fake_repos())
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # read once at import by huggingface_hub
    hf_utils.close_session()  # a fresh client picks up this environment
    yield server
    server.close()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base_files_wanted(repos) -> list[str]:
    return sorted(n for n in repos[BASE] if n == "model_index.json" or n.split("/")[0] in ("text_encoder", "tokenizer",
                                                                                            "vae"))


def test_catalogue_is_data_with_the_default_set():
    names = [it.name for it in hub.catalogue()]
    assert {"sdv2-1.3b", "wan2.1-1.3b-base", "sdv2-14b", "taehv"} <= set(names)
    assert [it.name for it in hub.default_items()] == ["sdv2-1.3b", "wan2.1-1.3b-base"]
    assert all(it.verified for it in hub.default_items())
    assert not hub.get_item("taehv").verified and "github" in hub.get_item("taehv").note
    assert hub.item_path("sdv2-1.3b", "/m") == Path("/m") / CAUSAL_DIR
    assert hub.item_path("wan2.1-1.3b-base", "/m") == Path("/m") / BASE_DIR
    with pytest.raises(EngineError, match="unknown model 'nope': choose from sdv2-1.3b"):
        hub.get_item("nope")


def test_default_download_layout_find_downloaded_and_noop(fake_hub):
    assert find_downloaded() is None
    assert hub.status("sdv2-1.3b") == hub.MISSING
    calls = []
    folders = hub.download(progress=lambda msg, frac: calls.append((msg, frac)))
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
    assert any("downloading StreamDiffusionV2/wan_causal_dmd_v2v/model.pt" in m for m, _ in calls)

    # a second download transfers no file data: one metadata call per repo, no HEAD, no GET of a file
    n = len(fake_hub.log)
    hub.download()
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


def test_interrupted_run_is_completed_by_the_next_one(fake_hub, monkeypatch):
    # stop in the middle of a file, as a GUI cancel (an exception from the progress callback) or Ctrl-C would
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 16384)
    monkeypatch.setattr(hub._Reporter, "interval", 0.0)
    stop_at = "text_encoder/model-00002-of-00002.safetensors"
    seen = []

    def cancel(msg, frac):
        seen.append(msg)
        if msg.startswith(f"downloading Wan2.1-T2V-1.3B-Diffusers/{stop_at}: "):  # bytes of that file arrived
            raise Cancelled

    with pytest.raises(Cancelled):
        hub.download(progress=cancel)
    assert seen[-1].endswith("16.4 kB of 80.0 kB")
    root = models_dir()
    assert hub.status("sdv2-1.3b") == hub.DOWNLOADED
    assert hub.status("wan2.1-1.3b-base") == hub.PARTIAL
    assert find_downloaded() is None
    assert not (root / BASE_DIR / stop_at).exists()  # huggingface_hub 2.x keeps no partial file across runs
    first = [g["file"] for g in fake_hub.body_gets()]
    assert stop_at in first and "text_encoder/model-00001-of-00002.safetensors" in first
    n = len(fake_hub.log)

    hub.download()
    again = [r for r in fake_hub.log[n:] if r["method"] == "GET" and r["file"]]
    fetched = [r["file"] for r in again]
    assert "wan_causal_dmd_v2v/model.pt" not in fetched  # finished files are not fetched again
    assert "text_encoder/model-00001-of-00002.safetensors" not in fetched
    assert [r["range"] for r in again if r["file"] == stop_at] == [None]  # the cut file starts over
    assert set(fetched) == {stop_at, *base_files_wanted(fake_repos())} - set(first[:-1])
    assert find_downloaded() == (root / CAUSAL_DIR, root / BASE_DIR)
    for name in base_files_wanted(fake_repos()):
        assert (root / BASE_DIR / name).read_bytes() == fake_repos()[BASE][name]


def test_corrupted_download_is_rejected_and_deleted(fake_hub):
    fake_hub.corrupt.add(f"{SDV2}/wan_causal_dmd_v2v/model.pt")
    with pytest.raises(EngineError) as err:
        hub.download(["sdv2-1.3b"])
    msg = str(err.value)
    assert "\n" not in msg and "corrupted (sha256" in msg and "sdv2 models download sdv2-1.3b" in msg
    assert not (models_dir() / CAUSAL_DIR / "model.pt").exists()
    assert hub.status("sdv2-1.3b") != hub.DOWNLOADED

    fake_hub.corrupt.clear()
    (folder,) = hub.download(["sdv2-1.3b"])
    assert (folder / "model.pt").read_bytes() == fake_repos()[SDV2]["wan_causal_dmd_v2v/model.pt"]


def test_damaged_file_on_disk_is_replaced(fake_hub):
    (folder,) = hub.download(["sdv2-1.3b"])
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    # the verified record no longer matches (mtime changed), so the content is hashed and re-downloaded
    n = len(fake_hub.body_gets())
    hub.download(["sdv2-1.3b"])
    assert len(fake_hub.body_gets()) == n + 1
    assert (folder / "model.pt").read_bytes() == data


def test_hub_update_fetches_only_changed_files(fake_hub):
    hub.download()
    n = len(fake_hub.log)
    old = fake_hub.repos[BASE]["vae/config.json"]
    fake_hub.repos[BASE]["vae/config.json"] = old.replace(b"16", b"32")  # same size, new git blob
    fake_hub.repos[SDV2]["wan_causal_dmd_v2v/model.pt"] = _bytes(9, 300_000)  # same size, new LFS sha256
    fake_hub.commit = hashlib.sha1(b"commit-2").hexdigest()
    hub.download()
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
    hub.download(["sdv2-1.3b"])
    assert fake_hub.body_gets() == []  # its sha256 matched the hub's


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
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    repos = fake_repos()
    need = len(repos[SDV2]["wan_causal_dmd_v2v/model.pt"]) + sum(len(repos[BASE][n]) for n in base_files_wanted(repos))
    assert hub.format_size(need) == "640.1 kB"  # exact sizes from the hub's metadata, not the catalogue's estimates
    with pytest.raises(EngineError, match=r"^not enough disk space in .*: the download needs 640\.1 kB, 1\.0 kB is "
                                          r"free; free some space or pass --dir FOLDER"):
        hub.download()
    assert fake_hub.body_gets() == []


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


def test_unknown_repo_is_one_line(fake_hub):
    with pytest.raises(EngineError, match=r"^the hub has no repository madebyollin/taehv \(HTTP 404\) \(UNVERIFIED"):
        hub.download(["taehv"])


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


def run_cli(argv: list[str]) -> int:
    """`sdv2 ...` through engine.cli once it registers `models`, else through a parser built by register_cli."""

    parser = sdv2_studio.engine.cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "models" in sub.choices:
        return sdv2_studio.engine.cli.main(argv)
    return hub.main(argv)


def test_register_cli_adds_models_command():
    parser = argparse.ArgumentParser(prog="sdv2")
    hub.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", "download", "sdv2-1.3b", "--dir", "D"])
    assert args.items == ["sdv2-1.3b"] and args.dir == "D" and args.fn is hub._cmd_download
    assert parser.parse_args(["models", "list"]).fn is hub._cmd_list
    assert parser.parse_args(["models", "path"]).item is None


def test_cli_list_path_download(fake_hub, capsys, tmp_path):
    assert run_cli(["models", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["ITEM", "STATUS", "SIZE", "DEFAULT", "PATH"]
    row = {ln.split()[0]: ln.split() for ln in lines[1:5]}
    assert row["sdv2-1.3b"][1:3] == ["missing", "unknown"]
    assert row["wan2.1-1.3b-base"][1:4] == ["missing", "~23.3", "GB"]
    assert "taehv*" in row
    assert f"models folder: {models_dir()}" in out

    assert run_cli(["models", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(models_dir())
    assert run_cli(["models", "path", "sdv2-1.3b"]) == 0
    assert capsys.readouterr().out.strip() == str(models_dir() / CAUSAL_DIR)

    assert run_cli(["models", "download"]) == 0
    cap = capsys.readouterr()
    assert "sdv2-1.3b: downloaded in" in cap.out and "wan2.1-1.3b-base: downloaded in" in cap.out
    assert "[100%]" in cap.err
    assert run_cli(["models", "list"]) == 0
    row = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()[1:5]}
    assert row["sdv2-1.3b"][1:4] == ["downloaded", "300.0", "kB"]

    other = tmp_path / "other"
    assert run_cli(["models", "download", "sdv2-14b", "--dir", str(other)]) == 0
    assert f"set SDV2_MODELS={other}" in capsys.readouterr().out

    assert run_cli(["models", "download", "bogus"]) == 2
    assert capsys.readouterr().err.startswith("sdv2: error: unknown model 'bogus'")


def test_cli_progress_without_a_terminal():
    buf = io.StringIO()
    show = hub._cli_progress(buf)
    for i in range(101):
        show(f"downloading a/b.pt: {i} kB of 100 kB", i / 100)
    lines = buf.getvalue().splitlines()
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("[100%]")
