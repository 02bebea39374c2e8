"""A fake ModelScope site on 127.0.0.1, spoken to by the real modelscope client (modelscope-hub).

It serves the two endpoints a ModelScope model download touches:

- `GET /api/v1/models/{owner}/{name}/repo/files?Revision=..&Recursive=..`: the file listing the
  client's `list_repo_files` reads, `{"Code": 200, "Data": {"Files": [...]}, "Success": true}`
  with each file's Path, Name, Type, Size, Sha256 and IsLFS, as modelscope.cn answers it;
- `GET|HEAD /api/v1/models/{owner}/{name}/repo?Revision=..&FilePath=..`: the download URL
  `get_file_download_url` builds. An LFS file answers 302 to the "CDN" (a second listener, like
  modelscope.cn's object storage), which serves the bytes with Range support and X-Linked-ETag;
  a small file is served directly.

Missing repos and files answer 404 with a ModelScope-style JSON body (`Code`, `Message`,
`Success: false`). State, knobs (cut the connection after N bytes, corrupt a byte) and request
records are `hub_server.FakeHub`'s, and the byte serving (Range, cuts, corruption) is its handler's,
so both fakes fail in exactly the same ways.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, quote, unquote, urlsplit

from hub_server import LFS_THRESHOLD, FakeHub, RequestRecord, _Handler, running_hub

__all__ = ["LFS_THRESHOLD", "FakeHub", "running_modelscope"]

_FILES = re.compile(r"^/api/v1/models/(?P<repo>[^/]+/[^/]+)/repo/files/?$")
_REPO = re.compile(r"^/api/v1/models/(?P<repo>[^/]+/[^/]+)/repo/?$")
_LFS = re.compile(r"^/lfs/(?P<sha>[0-9a-f]{64})$")
NOT_FOUND_CODE = 10010205  # a business code the client does not special-case: the HTTP 404 counts


class _ModelScopeHandler(_Handler):
    def _dispatch(self, head: bool) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        record = RequestRecord(
            self.command,
            path,
            self.headers.get("Range"),
            authorization=self.headers.get("Authorization"),
        )
        try:
            if self.server.is_cdn:
                match = _LFS.match(path)
                entry = hub.find_lfs(match.group("sha")) if match else None
                if entry is None:
                    self._ms_error(404, "object not found", record)
                else:
                    headers = {"ETag": f'"{entry.sha256}"', "X-Linked-ETag": f'"{entry.sha256}"'}
                    self._send_body(entry, head, record, extra=headers)
            elif match := _FILES.match(path):
                self._listing(match.group("repo"), record)
            elif match := _REPO.match(path):
                self._file(match.group("repo"), query.get("FilePath", ""), head, record)
            else:
                self._ms_error(404, "not found", record)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            hub.record(record)

    def _listing(self, repo_id: str, record: RequestRecord) -> None:
        files = self.server.hub.repos.get(repo_id)
        if files is None:
            self._ms_error(404, f"model {repo_id} not found", record)
            return
        entries = [
            {
                "Name": entry.filename.rsplit("/", 1)[-1],
                "Path": entry.filename,
                "Type": "blob",
                "Size": entry.size,
                "Sha256": entry.sha256,
                "IsLFS": entry.is_lfs,
                "Revision": "0123456789abcdef0123456789abcdef01234567",
                "CommitMessage": "upload",
                "CommittedDate": 1706745600,
                "Mode": "33188",
            }
            for entry in files.values()
        ]
        self._json(200, {"Code": 200, "Data": {"Files": entries}, "Success": True}, record)

    def _file(self, repo_id: str, filename: str, head: bool, record: RequestRecord) -> None:
        files = self.server.hub.repos.get(repo_id)
        if files is None:
            self._ms_error(404, f"model {repo_id} not found", record)
            return
        entry = files.get(filename)
        if entry is None:
            self._ms_error(404, f"file {filename} not found", record)
            return
        if not entry.is_lfs:
            self._send_body(entry, head, record, extra={})
            return
        record.status = 302
        self.send_response(302)
        self.send_header("Location", f"{self.server.hub.cdn_url}/lfs/{quote(entry.sha256)}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _ms_error(self, status: int, message: str, record: RequestRecord) -> None:
        payload = {
            "Code": NOT_FOUND_CODE if status == 404 else status,
            "Message": message,
            "RequestId": "fake-request",
            "Success": False,
        }
        self._json(status, payload, record)

    def _json(self, status: int, payload: dict[str, object], record: RequestRecord) -> None:
        body = json.dumps(payload).encode()
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@contextmanager
def running_modelscope(hub: FakeHub | None = None) -> Iterator[FakeHub]:
    """Start the site and its CDN on free loopback ports; `hub.hub_url` is the endpoint."""
    with running_hub(hub, _ModelScopeHandler) as running:
        yield running
