"""A stand-in for the Hugging Face Hub's HTTP endpoints, for tests: NOT a Hub.

It answers just the routes huggingface_hub uses to create a repository, upload files and read them back
(repo create, YAML validation, preupload answering "regular" for every file so that contents travel inline,
the NDJSON commit, revision info, tree listing, HEAD/GET resolve). It listens on 127.0.0.1 only, serves a
bounded number of requests and stops with its owner. Nothing about the real Hub's authentication, private or
gated repositories, pull requests, Xet/LFS storage, rate limits or server-side card validation is exercised.

    with HubStandIn() as hub:          # then run clients with HF_ENDPOINT=hub.url
        ...
        hub.repos["org/name"]["files"]  # what was committed
"""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

MAX_REQUESTS = 2000


class HubStandIn:
    def __init__(self):
        self.repos = {}
        self.requests = []
        self.lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status, body=b"", headers=None, head=False):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _route(self, method):
                with standin.lock:
                    standin.requests.append((method, self.path))
                    if len(standin.requests) > MAX_REQUESTS:
                        return self._send(429, {"error": "stand-in request budget exhausted"})
                path = unquote(urlparse(self.path).path)
                parts = [p for p in path.split("/") if p]
                try:
                    return standin.handle(self, method, parts)
                except KeyError:
                    return self._send(404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound"})

            def do_GET(self):
                self._route("GET")

            def do_HEAD(self):
                self._route("HEAD")

            def do_POST(self):
                self._route("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # -- routes ---------------------------------------------------------------------------------------
    def _repo_id(self, parts):
        return f"{parts[0]}/{parts[1]}"

    def _info(self, repo_id):
        repo = self.repos[repo_id]
        return {
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo["sha"],
            "private": repo["private"],
            "siblings": [{"rfilename": p} for p in sorted(repo["files"])],
            "tags": [],
            "downloads": 0,
        }

    def handle(self, h, method, parts):
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            body = json.loads(h._body() or b"{}")
            repo_id = (
                f"{body.get('organization') or 'user'}/{body['name']}" if "/" not in body["name"] else body["name"]
            )
            with self.lock:
                self.repos.setdefault(repo_id, {"files": {}, "sha": "0" * 40, "private": bool(body.get("private"))})
            return h._send(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})
        if parts[:2] == ["api", "validate-yaml"]:
            h._body()
            return h._send(200, {"errors": [], "warnings": []})
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = self._repo_id(parts[2:]), parts[4:]
            if not rest:
                return h._send(200, self._info(repo_id))
            if rest[0] == "revision":
                return h._send(200, self._info(repo_id))
            if rest[0] == "preupload" and method == "POST":
                files = json.loads(h._body())["files"]
                self.repos[repo_id]  # KeyError -> 404
                return h._send(
                    200,
                    {
                        "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files],
                        "commitOid": self.repos[repo_id]["sha"],
                    },
                )
            if rest[0] == "commit" and method == "POST":
                return self._commit(h, repo_id)
            if rest[0] == "tree":
                repo = self.repos[repo_id]
                return h._send(
                    200,
                    [
                        {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                        for p, b in sorted(repo["files"].items())
                    ],
                )
            return h._send(404, {"error": f"stand-in has no route {parts}"})
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, file_path = self._repo_id(parts), "/".join(parts[4:])
            repo = self.repos[repo_id]
            if file_path not in repo["files"]:
                return h._send(
                    404,
                    {"error": "entry not found"},
                    {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo["sha"]},
                    head=method == "HEAD",
                )
            data = repo["files"][file_path]
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            return h._send(
                200,
                data,
                {"X-Repo-Commit": repo["sha"], "ETag": etag, "Content-Type": "application/octet-stream"},
                head=method == "HEAD",
            )
        return h._send(404, {"error": f"stand-in has no route {parts}"})

    def _commit(self, h, repo_id):
        lines = [json.loads(line) for line in h._body().decode().splitlines() if line.strip()]
        with self.lock:
            repo = self.repos[repo_id]
            for line in lines:
                value = line["value"]
                if line["key"] == "file":
                    repo["files"][value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "deletedFile":
                    repo["files"].pop(value["path"], None)
            repo["sha"] = hashlib.sha1(
                json.dumps(sorted((p, hashlib.sha1(b).hexdigest()) for p, b in repo["files"].items())).encode()
            ).hexdigest()
        return h._send(
            200,
            {
                "commitUrl": f"{self.url}/{repo_id}/commit/{repo['sha']}",
                "commitOid": repo["sha"],
                "commitMessage": lines[0]["value"].get("summary", ""),
                "pullRequestUrl": None,
            },
        )
