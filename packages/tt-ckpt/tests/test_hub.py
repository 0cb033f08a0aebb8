"""download() against a local HTTP server that answers the hub endpoints snapshot_download uses.

huggingface_hub 2.x calls, for a model repo at a branch:
  GET  /api/models/{repo}/revision/{rev}            -> {"id", "sha"}      (resolve the commit)
  GET  /api/models/{repo}/tree/{sha}?recursive=...  -> [{"type", "path", "size", "oid"}, ...]
  HEAD /{repo}/resolve/{sha}/{file}                  -> X-Repo-Commit, ETag, Content-Length
  GET  /{repo}/resolve/{sha}/{file}                  -> the bytes
Errors are told apart by status and the X-Error-Code header (RepoNotFound, GatedRepo).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest
from huggingface_hub import constants
from tt_ckpt import DownloadError, download, hub_repo_id

REPO = "tiny-org/tiny-llama"
SHA = "0123456789abcdef0123456789abcdef01234567"
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": b"\x00" * 1000,
    "tokenizer.json": b'{"version": "1.0"}',
    "original/consolidated.00.pth": b"meta weights",
}


class FakeHub(BaseHTTPRequestHandler):
    """Serves ``FILES`` as the repo ``REPO``; other repos are missing, ``*-gated`` is gated."""

    requests: list[str] = []
    tokens: list[str | None] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> None:
        path = unquote(urlsplit(self.path).path)
        FakeHub.requests.append(f"{self.command} {path}")
        FakeHub.tokens.append(self.headers.get("Authorization"))
        if REPO + "-gated" in path:
            return self._reply(403, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo"})
        if REPO not in path:
            return self._reply(404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"})
        if path.startswith(f"/api/models/{REPO}/revision/"):
            return self._json({"id": REPO, "sha": SHA})
        if path == f"/api/models/{REPO}/tree/{SHA}":
            return self._json([self._entry(name, data) for name, data in FILES.items()])
        prefix = f"/{REPO}/resolve/{SHA}/"
        if path.startswith(prefix) and path[len(prefix) :] in FILES:
            data = FILES[path[len(prefix) :]]
            etag = f'"{hashlib.sha1(data).hexdigest()}"'
            return self._reply(200, data, {"X-Repo-Commit": SHA, "ETag": etag})
        return self._reply(404, b"{}", {"X-Error-Code": "EntryNotFound"})

    def _json(self, value) -> None:
        self._reply(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    @staticmethod
    def _entry(name: str, data: bytes) -> dict:
        return {
            "type": "file",
            "path": name,
            "size": len(data),
            "oid": hashlib.sha1(data).hexdigest(),
        }

    do_GET = do_HEAD = _route


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub reads these once at import; patch the module values too.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    FakeHub.requests, FakeHub.tokens = [], []
    yield endpoint
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_writes_every_file(hub, tmp_path):
    out = download(REPO, tmp_path / "model")
    assert out == tmp_path / "model"
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data
    assert f"GET /api/models/{REPO}/revision/main" in FakeHub.requests
    assert hub_repo_id(out) == REPO  # tt_source.json: adapters trained on it name the repo


def test_hub_repo_id_reads_only_a_plain_string(tmp_path):
    assert hub_repo_id(tmp_path) is None  # not downloaded by tt
    (tmp_path / "tt_source.json").write_text("not json")
    assert hub_repo_id(tmp_path) is None
    (tmp_path / "tt_source.json").write_text('{"repo_id": {"__class__": "os.system"}}')
    assert hub_repo_id(tmp_path) is None
    (tmp_path / "tt_source.json").write_text('["acme/m"]')
    assert hub_repo_id(tmp_path) is None


def test_download_ignore_patterns_and_token_from_env(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    out = download(REPO, tmp_path / "model", ignore_patterns=["original/*"])
    assert not (out / "original").exists()
    assert (out / "config.json").read_bytes() == FILES["config.json"]
    assert set(FakeHub.tokens) == {"Bearer hf_secret"}


def test_repo_not_found(hub, tmp_path):
    with pytest.raises(DownloadError) as info:
        download("tiny-org/nothing", tmp_path / "model", revision="v1")
    message = str(info.value)
    assert f"Downloading 'tiny-org/nothing' (revision v1) from {hub} failed" in message
    assert "not found or you are not allowed to see it" in message and "HF_TOKEN" in message


def test_gated_repo(hub, tmp_path):
    with pytest.raises(DownloadError, match=rf"gated\. Accept its licence at {hub}/{REPO}-gated"):
        download(REPO + "-gated", tmp_path / "model")


def test_offline_mode(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        download(REPO, tmp_path / "model")
    assert FakeHub.requests == []


def test_endpoint_that_refuses(monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(DownloadError, match=r"could not be reached and no cached copy exists"):
        download(REPO, tmp_path / "model")
