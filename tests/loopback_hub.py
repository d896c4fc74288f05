"""A Hugging Face Hub on 127.0.0.1 for tests: the file endpoints huggingface_hub downloads with.

`hf_hub_download` asks `HEAD {endpoint}/{repo}/resolve/{revision}/{file}` for the commit
(X-Repo-Commit), the ETag and the size, then GETs the same URL. Errors are answered as the Hub
answers them (read from huggingface_hub's `hf_raise_for_status`): a repository that does not
exist, or is private without a token, 401 + `X-Error-Code: RepoNotFound`; a gated one without a
token that may read it, 401 + `GatedRepo`; an unknown revision 404 + `RevisionNotFound`; a
missing file 404 + `EntryNotFound`. Every request is logged as (method, path).

Uploads, as `HfApi.create_repo` and `upload_folder` make them: `POST /api/repos/create`,
`POST /api/validate-yaml` (the model card's metadata), `POST /api/models/{repo}/preupload/{rev}`
(answered "regular" for every file: the contents then come inline, base64, in the NDJSON body
of `POST /api/models/{repo}/commit/{rev}`, which makes a new commit). Writes need the token
`write_token`; without it 401."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files
    gated_token: str | None = None  # gated: only this token may read it


class LoopbackHub:
    def __init__(self, write_token: str = "hf_writer"):
        self.write_token = write_token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []  # the bodies of repository creations
        # file name -> how many more GETs of it break off halfway (the connection then closes)
        self.cut: dict[str, int] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_commit(self, repo_id: str, folder: Path, ref: str = "main") -> str:
        """The files of `folder` as a new commit of `repo_id`, `ref` pointing at it."""
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        return self.commit_files(repo_id, files, ref)

    def commit_files(self, repo_id: str, files: dict[str, bytes], ref: str = "main") -> str:
        repo = self.repos.setdefault(repo_id, Repo())
        digest = hashlib.sha1(repr(sorted(files.items())).encode() + ref.encode())
        commit = digest.hexdigest()
        repo.commits[commit] = files
        repo.refs[ref] = commit
        return commit

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(hub: LoopbackHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _json(self, status: int, data) -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):
            path = unquote(self.path.split("?")[0])
            hub.requests.append(("POST", path))
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Authorization") != f"Bearer {hub.write_token}":
                return self._fail(401, "Unauthorized", "Invalid credentials in Authorization")
            if path == "/api/validate-yaml":
                return self._json(200, {"errors": [], "warnings": []})
            if path == "/api/repos/create":
                data = json.loads(body)
                hub.created.append(data)
                repo_id = f"{data['organization']}/{data['name']}"
                hub.repos.setdefault(repo_id, Repo())
                return self._json(200, {"url": f"{hub.url}/{repo_id}"})
            parts = path.strip("/").split("/")  # api/models/ORG/NAME/{preupload|commit}/REV
            repo_id, action, ref = "/".join(parts[2:4]), parts[4], parts[5]
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._fail(404, "RepoNotFound", "Repository not found")
            if action == "preupload":
                files = json.loads(body)["files"]
                answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                           "oid": None} for f in files]  # fmt: skip
                return self._json(200, {"files": answer})
            files = dict(repo.commits.get(repo.refs.get(ref, ""), {}))
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    files[value["path"]] = base64.b64decode(value["content"])
            commit = hub.commit_files(repo_id, files, ref)
            url = f"{hub.url}/{repo_id}/commit/{commit}"
            return self._json(200, {"commitUrl": url, "commitOid": commit})

        def _fail(self, status: int, code: str, message: str, commit: str = "") -> None:
            self.send_response(status)
            if commit:  # a file missing at a known commit: huggingface_hub caches its absence
                self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _answer(self, body: bool) -> None:
            path = unquote(self.path.split("?")[0])
            hub.requests.append((self.command, path))
            parts = path.strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._fail(404, "EntryNotFound", "not a resolve URL")
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._fail(401, "RepoNotFound", "Repository not found")
            if repo.gated_token is not None:
                if self.headers.get("Authorization") != f"Bearer {repo.gated_token}":
                    return self._fail(401, "GatedRepo", "Access to this model is restricted")
            commit = repo.refs.get(revision, revision)
            if commit not in repo.commits:
                return self._fail(404, "RevisionNotFound", "Invalid rev id")
            data = repo.commits[commit].get(filename)
            if data is None:
                return self._fail(404, "EntryNotFound", "Entry not found", commit)
            start = 0
            ranged = self.headers.get("Range", "")
            if body and ranged.startswith("bytes="):  # a resumed download
                start = int(ranged[len("bytes=") :].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            if hub.cut.get(filename, 0) > 0:
                hub.cut[filename] -= 1
                self.wfile.write(data[start : start + (len(data) - start) // 2])
                self.close_connection = True
                return
            self.wfile.write(data[start:])

    return Handler
