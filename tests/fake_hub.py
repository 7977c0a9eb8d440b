"""A small Hugging Face Hub-compatible HTTP server for tests: 127.0.0.1, a free port, repos in memory.

It implements exactly the endpoints huggingface_hub 2.4 calls for what ddpm.hub does:

    POST /api/repos/create                                   create_repo (409 when it exists)
    POST /api/validate-yaml                                  README.md front matter check (upload_folder, create_commit)
    POST /api/{type}s/{repo}/preupload/{rev}                 upload modes: always "regular" (bytes come inline)
    POST /api/{type}s/{repo}/commit/{rev}                    NDJSON commit: header, file (base64), deletedFile, deletedFolder
    POST /api/{type}s/{repo}/branch/{branch}                 create_branch
    POST /api/spaces/{repo}/variables                        add_space_variable
    GET  /api/{type}s/{repo}[/revision/{rev}]                model_info / space_info (sha, siblings: size, blobId, lfs)
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]             list_repo_tree (snapshot_download, list_repo_files)
    HEAD /[{type}s/]{repo}/resolve/{rev}/{file}              file metadata: X-Repo-Commit, ETag, Content-Length
                                                             (+ X-Linked-Etag = sha256, X-Linked-Size for LFS files)
    GET  /[{type}s/]{repo}/resolve/{rev}/{file}              file bytes

File metadata is the real Hub's: a file matching a `filter=lfs` pattern of the commit's .gitattributes (or bigger
than 10 MiB) is an LFS file, recorded by its sha256 and size (its git blob id is that of its LFS pointer); any
other file by its git blob id. huggingface_hub names cache blobs by that digest (the ETag).

Errors are 404s with the X-Error-Code the client maps to typed errors (RepoNotFound, RevisionNotFound,
EntryNotFound). Writes need "Authorization: Bearer <token>"; private repos need it for reads too.
Every request is appended to `FakeHub.requests` so tests can check what was (not) fetched.
`FakeHub.tamper(repo, path)` serves other bytes for a file (same size) under its unchanged metadata: what a download
corrupted on the way receives.
Each response closes its connection (HTTP/1.0), so a stopped server is really unreachable.

    with FakeHub(token="hf_test") as hub:        # hub.url -> "http://127.0.0.1:PORT"
        HfApi(endpoint=hub.url, token="hf_test").create_repo("user/model")

Run `python tests/fake_hub.py` to serve one until Ctrl-C (handy to try the app by hand).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from fnmatch import fnmatch
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")
SPACE_COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
GITATTRIBUTES = b"".join(b"*.%s filter=lfs diff=lfs merge=lfs -text\n" % ext
                         for ext in (b"safetensors", b"bin", b"pt", b"pth", b"ckpt", b"pkl", b"pickle", b"png"))
LFS_MIN_BYTES = 10 << 20  # the Hub stores a bigger file in LFS whatever .gitattributes says


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a file: sha1(b"blob <size>\\0" + content), as the Hub reports for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(content: bytes) -> bytes:
    """The small text file git stores in place of an LFS file."""
    sha = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(content)}\n".encode()


def corrupted(content: bytes, path: str) -> bytes:
    """Other bytes of the same length: a .safetensors file keeps its header and gets other, still finite values
    (the lowest mantissa bit of each tensor's first element flipped); any other file gets its last byte changed."""
    data = bytearray(content)
    if path.endswith(".safetensors"):
        n = int.from_bytes(content[:8], "little")
        header = json.loads(content[8:8 + n])
        for name, tensor in header.items():
            start, end = tensor["data_offsets"] if name != "__metadata__" else (0, 0)
            if end > start:
                data[8 + n + start] ^= 1  # little-endian: the first byte holds the lowest mantissa bits
    else:
        data[-1] ^= 1
    return bytes(data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    sdk: str | None = None
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name or a full commit oid -> the commit, or None."""
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


def file_record(commit: Commit, path: str) -> dict[str, Any]:
    """The Hub's record of a file (a model_info sibling without its name): size and git blob id; for an LFS file
    also "lfs" (sha256, size, pointer size), and the blob id is its pointer's."""
    content = commit.files[path]
    patterns = [line.split()[0] for line in commit.files.get(".gitattributes", b"").decode().splitlines()
                if "filter=lfs" in line.split()[1:]]
    name = path.rsplit("/", 1)[-1]
    if len(content) < LFS_MIN_BYTES and not any(fnmatch(name, p) or fnmatch(path, p) for p in patterns):
        return {"size": len(content), "blobId": git_blob_sha1(content)}
    pointer = lfs_pointer(content)
    return {"size": len(content), "blobId": git_blob_sha1(pointer),
            "lfs": {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": len(pointer)}}


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def front_matter(content: str) -> dict[str, Any] | None:
    """The YAML metadata block at the top of a README.md, or None when there is none."""
    if not content.startswith("---"):
        return None
    end = content.find("\n---", 3)
    if end < 0:
        raise ValueError("the metadata block that starts with --- is never closed")
    data = yaml.safe_load(content[3:end])
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("the metadata block must be a YAML mapping")
    return data


class FakeHub:
    """The server. `start()` (or `with`) serves on a thread; `stop()` closes the port; the repos stay in memory."""

    def __init__(self, *, token: str = "hf_fake_token", user: str = "user") -> None:
        self.token, self.user = token, user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.authorizations: list[str] = []  # every Authorization header value received
        self.tampered: dict[tuple[str, str, str], bytes] = {}  # (type, repo, path) -> bytes served instead; clear() repairs
        self.lock = threading.RLock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the fake hub was never started")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        # Restarting after stop() reuses the same port, so clients with a stored URL reconnect.
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port or 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state helpers for tests ---------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The tree at a revision: path -> bytes."""
        commit = self.repo(repo_id, repo_type).resolve(revision)
        if commit is None:
            raise KeyError(f"{repo_id} has no revision {revision!r}")
        return dict(commit.files)

    def add_commit(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model", branch: str = "main",
                   message: str = "test commit", delete: tuple[str, ...] = ()) -> str:
        """Commit files directly (test set-up, e.g. a hostile repo); creates the repo if needed. Returns the oid."""
        with self.lock:
            repo = self.repos.get((repo_type, repo_id)) or self._create(repo_type, repo_id, private=False, sdk=None)
            return self._commit(repo, branch, message, files, delete)

    def tamper(self, repo_id: str, path: str, content: bytes | None = None, *, repo_type: str = "model") -> bytes:
        """From now on serve `content` for `path` (at every revision) while model_info, the tree and the HEAD still
        describe the committed file: what a download corrupted on the way gets. content=None: corrupted(the file on
        main), same size. Returns the bytes served."""
        if content is None:
            content = corrupted(self.files(repo_id, repo_type=repo_type)[path], path)
        self.tampered[(repo_type, repo_id, path)] = content
        return content

    def pushed_paths(self, repo_id: str, repo_type: str = "model") -> set[str]:
        """Every path written by a commit after the repo's initial commit."""
        repo = self.repo(repo_id, repo_type)
        written: set[str] = set()
        for commit in repo.commits.values():
            if commit.parent is None:
                continue
            parent = repo.commits[commit.parent].files
            written |= {p for p, b in commit.files.items() if parent.get(p) != b}
        return written

    # -- the model of a Hub --------------------------------------------------------------------------
    def _new_oid(self, seed: str) -> str:
        return hashlib.sha1(f"{next(self._counter)}:{seed}".encode()).hexdigest()

    def _create(self, repo_type: str, repo_id: str, *, private: bool, sdk: str | None) -> Repo:
        repo = Repo(repo_type, repo_id, private=private, sdk=sdk)
        oid = self._new_oid(repo_id)
        repo.commits[oid] = Commit(oid, None, "initial commit", {".gitattributes": GITATTRIBUTES})
        repo.branches["main"] = oid
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def _commit(self, repo: Repo, branch: str, message: str, add: dict[str, bytes], delete: tuple[str, ...] = (),
                delete_folders: tuple[str, ...] = ()) -> str:
        parent = repo.resolve(branch)
        if parent is None or branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        files = dict(parent.files)
        for path in delete:
            if path not in files:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            del files[path]
        for folder in delete_folders:
            prefix = folder.rstrip("/") + "/"
            files = {p: b for p, b in files.items() if not p.startswith(prefix)}
        files.update(add)
        oid = self._new_oid(message)
        repo.commits[oid] = Commit(oid, parent.oid, message, files)
        repo.branches[branch] = oid
        return oid

    def _auth_ok(self, authorization: str | None) -> bool:
        return authorization == f"Bearer {self.token}"


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # -- plumbing ------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        hub = self.hub
        with hub.lock:
            hub.requests.append((self.command, self.path))
            if self.headers.get("Authorization"):
                hub.authorizations.append(self.headers["Authorization"])
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = parse_qs(split.query)
        try:
            with hub.lock:
                if parts[0] == "api":
                    self._api(parts[1:], query)
                else:
                    self._resolve(parts)
        except HubError as e:
            headers = dict(e.headers)
            headers["X-Error-Message"] = e.message
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json(e.status, {"error": e.message}, headers)
        except Exception as e:  # a bug here or a malformed request: say so instead of dropping the connection
            self._json(400, {"error": f"fake hub could not handle {self.command} {self.path}: {e!r}"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        authorized = self.hub._auth_ok(self.headers.get("Authorization"))
        if write and not authorized:
            raise HubError(401, "Invalid credentials in Authorization header")
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _revision(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -- /api/... ----------------------------------------------------------------------------------
    def _api(self, parts: list[str], query: dict[str, list[str]]) -> None:
        if parts == ["repos", "create"] and self.command == "POST":
            return self._create_repo()
        if parts == ["validate-yaml"] and self.command == "POST":
            return self._validate_yaml()
        if len(parts) < 3 or parts[0] not in REPO_TYPES:
            raise HubError(404, f"unknown endpoint /api/{'/'.join(parts)}")
        repo_type, repo_id, rest = REPO_TYPES[parts[0]], f"{parts[1]}/{parts[2]}", parts[3:]
        if not rest or rest[0] == "revision":
            if self.command != "GET":
                raise HubError(405, "method not allowed")
            repo = self._repo(repo_type, repo_id)
            commit = self._revision(repo, "/".join(rest[1:]) if rest else "main")
            return self._json(200, self._info(repo, commit))
        action, arg = rest[0], "/".join(rest[1:])
        if action == "tree" and self.command == "GET":
            repo = self._repo(repo_type, repo_id)
            revision, _, path = arg.partition("/")
            commit = self._revision(repo, revision)
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._json(200, self._tree(commit, path, recursive=recursive))
        if action == "preupload" and self.command == "POST":
            repo = self._repo(repo_type, repo_id, write=True)
            commit = self._revision(repo, arg)
            files = json.loads(self._body())["files"]
            return self._json(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_blob_sha1(commit.files[f["path"]]) if f["path"] in commit.files else None}
                for f in files], "commitOid": commit.oid})
        if action == "commit" and self.command == "POST":
            if "create_pr" in query:
                raise HubError(400, "the fake hub does not do pull requests")
            repo = self._repo(repo_type, repo_id, write=True)
            return self._json(200, self._commit(repo, arg))
        if action == "branch" and self.command == "POST":
            repo = self._repo(repo_type, repo_id, write=True)
            if arg in repo.branches:
                raise HubError(409, f"Branch {arg} already exists")
            body = json.loads(self._body() or b"{}")
            repo.branches[arg] = self._revision(repo, body.get("startingPoint") or "main").oid
            return self._json(200, {})
        if action == "variables" and repo_type == "space":
            repo = self._repo(repo_type, repo_id, write=True)
            if self.command == "POST":
                body = json.loads(self._body())
                if not isinstance(body.get("key"), str) or not isinstance(body.get("value"), str):
                    raise HubError(400, "a variable needs a string key and value")
                repo.variables[body["key"]] = {"value": body["value"], "description": body.get("description"),
                                               "updatedAt": _now()}
            return self._json(200, repo.variables)
        raise HubError(404, f"unknown endpoint /api/{'/'.join(parts)}")

    def _create_repo(self) -> None:
        hub = self.hub
        if not hub._auth_ok(self.headers.get("Authorization")):
            raise HubError(401, "Invalid credentials in Authorization header")
        body = json.loads(self._body())
        repo_type = body.get("type") or "model"
        namespace = body.get("organization") or hub.user
        repo_id = f"{namespace}/{body['name']}"
        url = f"{hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in hub.repos:  # create_repo(exist_ok=True) reads "url" from this answer too
            return self._json(409, {"error": f"You already created this {repo_type} repo", "url": url},
                              {"X-Error-Message": f"You already created this {repo_type} repo"})
        if repo_type == "space" and body.get("sdk") not in SPACE_SDKS:
            raise HubError(400, f"a Space needs an sdk in {SPACE_SDKS}")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo = hub._create(repo_type, repo_id, private=private, sdk=body.get("sdk"))
        for var in body.get("variables") or []:
            repo.variables[var["key"]] = {"value": var["value"], "description": var.get("description"),
                                          "updatedAt": _now()}
        self._json(200, {"url": url, "name": repo_id})

    def _validate_yaml(self) -> None:
        body = json.loads(self._body())
        errors: list[str] = []
        try:
            meta = front_matter(body.get("content", ""))
        except (ValueError, yaml.YAMLError) as e:
            meta, errors = None, [f"invalid YAML metadata: {e}"]
        if meta is not None and body.get("repoType") == "space":
            if meta.get("sdk") not in SPACE_SDKS:
                errors.append(f'"sdk" must be one of {", ".join(SPACE_SDKS)}')
            for key in ("colorFrom", "colorTo"):
                if key in meta and meta[key] not in SPACE_COLORS:
                    errors.append(f'"{key}" must be one of {", ".join(SPACE_COLORS)}')
        if meta is not None and "license" in meta and not isinstance(meta["license"], str):
            errors.append('"license" must be a string')
        if meta is not None and "tags" in meta and not (
            isinstance(meta["tags"], list) and all(isinstance(t, str) for t in meta["tags"])
        ):
            errors.append('"tags" must be a list of strings')
        if errors:
            return self._json(400, {"errors": [{"message": m} for m in errors], "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def _info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": repo.repo_id, "sha": commit.oid, "private": repo.private, "lastModified": _now(), "tags": [],
            "siblings": [{"rfilename": p, **file_record(commit, p)} for p in sorted(commit.files)],
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        return info

    @staticmethod
    def _tree(commit: Commit, path: str, *, recursive: bool) -> list[dict[str, Any]]:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for p, b in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):].split("/")
            for depth in range(1, len(rel)):  # the folders on the way
                folder = prefix + "/".join(rel[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                                "size": 0, "path": folder})
                if not recursive:
                    break
            if recursive or len(rel) == 1:
                record = file_record(commit, p)
                entries[p] = {"type": "file", "oid": record["blobId"], "size": len(b), "path": p}
                if "lfs" in record:
                    entries[p]["lfs"] = {"oid": record["lfs"]["sha256"], "size": len(b),
                                         "pointerSize": record["lfs"]["pointerSize"]}
        return list(entries.values())

    def _commit(self, repo: Repo, revision: str) -> dict[str, Any]:
        if self.headers.get("Content-Type", "").split(";")[0] != "application/x-ndjson":
            raise HubError(400, "the commit payload must be application/x-ndjson")
        message, add, delete, delete_folders, parent = "", {}, [], [], None
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message, parent = value.get("summary", ""), value.get("parentCommit")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "file contents must be base64")
                add[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                delete.append(value["path"])
            elif key == "deletedFolder":
                delete_folders.append(value["path"])
            else:
                raise HubError(400, f"the fake hub does not support {key!r} operations (LFS)")
        if not message:
            raise HubError(400, "a commit needs a summary")
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if parent is not None and parent != repo.branches[revision]:
            raise HubError(412, "the parent commit is not the head of the branch")
        oid = self.hub._commit(repo, revision, message, add, tuple(delete), tuple(delete_folders))
        url = f"{self.hub.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{oid}"
        return {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None}

    # -- /{prefix}{repo}/resolve/{rev}/{path} ----------------------------------------------------------
    def _resolve(self, parts: list[str]) -> None:
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
        if len(parts) < 5 or parts[2] != "resolve" or self.command not in ("GET", "HEAD"):
            raise HubError(404, "not found")
        repo = self._repo(repo_type, f"{parts[0]}/{parts[1]}")
        commit = self._revision(repo, parts[3])
        path = "/".join(parts[4:])
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        record = file_record(commit, path)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{record["blobId"]}"'}
        if "lfs" in record:  # the real Hub redirects to a CDN; the client reads the file's etag and size from these
            headers.update({"X-Linked-Etag": f'"{record["lfs"]["sha256"]}"', "X-Linked-Size": str(record["size"])})
        content = self.hub.tampered.get((repo_type, repo.repo_id, path), commit.files[path])
        self._send(200, content, headers, content_type="application/octet-stream")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


if __name__ == "__main__":
    import sys
    import time

    server = FakeHub(token=sys.argv[1] if len(sys.argv) > 1 else "hf_fake_token").start()
    print(f"fake hub on {server.url} (token {server.token!r}); HF_ENDPOINT={server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
