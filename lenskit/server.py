"""Loopback static server for the viewer: the packaged ``lenskit.viewer`` files and the named runs' export.json.

Nothing is resolved from the request path on disk: at start-up :class:`Site` builds a table of every URL it will
answer (each viewer file, ``/runs.json``, ``/runs/<name>/export.json``) and a request is an exact lookup in that table
after percent-decoding, so ``/../``, ``%2e%2e/`` and friends simply find nothing (404). Each registered file is
resolved again, symlinks and all (``Path.resolve(strict=True)``), when it is served, and must lie in its run folder
(or the viewer's folder) as that folder resolved at start-up; the file is opened once, without blocking, and what
was opened is checked (:func:`read_inside`), so a file or folder swapped for a symlink or a FIFO while serving is
refused (403), never followed nor waited on. Requests whose ``Host`` (and, for an absolute-form target such as
``GET http://name/``, its authority) is not the bound address or ``localhost`` are refused, as are requests with no
or several ``Host`` headers (a DNS-rebinding guard: a web page cannot make the browser read exports through a name it
controls), and only GET and HEAD are answered. A connection idle for ``Handler.timeout`` seconds mid-request is
closed, and a request's line and headers must all arrive within ``Server.request_deadline`` seconds however slowly
they drip in (a slowloris client holds no thread for long); at most ``Server.max_connections`` connections are served
at once, the next ones are answered 503 at once. A client that goes away mid-answer is no error. Every answer,
Python's own error pages (400, 414, 431, 501) included, carries :data:`SECURITY_HEADERS`; an HTTP/0.9 request (no
version: its answer would be a bare body with no status nor headers) is not answered.
JSON is gzip-compressed when the client accepts it (``gzip;q=0`` does not). :meth:`Site.get` answers one path
without sockets (``lenskit serve --get PATH``).
"""

from __future__ import annotations

import errno
import gzip
import io
import ipaddress
import json
import os
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from . import __version__
from .errors import InputError, LenskitError, OutputError
from .schema import EXPORT_FILE
from .survey_schema import SURVEY_FILE

VIEWER_PACKAGE = "lenskit.viewer"
VIEWER_SUFFIXES = {".html", ".css", ".js", ".json", ".svg", ".png", ".ico"}
VIEWER_DIRS = ("", "js", "vendor")  # folders of the viewer that are served (the rest, e.g. __init__.py, is not)
SCAN_DEPTH = 2  # `lenskit serve` with no RUN_DIR: folders up to this many levels below the current one
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 1  # loopback first: level 1 compresses the ~12 MB default export 3x in 0.15 s (level 6: 0.8 s, 15% smaller)
GZIP_CACHE_BYTES = 256 << 20  # compressed files kept, least recently used dropped first; warm() stops when it is full
MAX_HEAD_BYTES = 128 << 10  # a request's line (http.server: 64 KiB at most, else 414) and headers, in all
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
GZIP_TYPES = {"application/json", "text/javascript; charset=utf-8", "text/css; charset=utf-8", "text/html; charset=utf-8"}
# The viewer loads nothing from elsewhere; the policy makes that a rule of the browser too.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Sent on every answer, by Handler.end_headers (so Python's own error pages get them too) and on the 503 of a full server.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", CSP),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),  # another site's page cannot embed these files (<script src>, <img>)
)
_BUSY_BODY = b"busy: too many connections, try again\n"
BUSY_ANSWER = (  # the whole answer of a server at Server.max_connections, written without a handler
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    + b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n" % len(_BUSY_BODY)
    + b"".join(f"{name}: {value}\r\n".encode("ascii") for name, value in SECURITY_HEADERS) + b"\r\n" + _BUSY_BODY
)
# Control characters of a request line are written escaped in the --verbose log (a client must not drive the terminal);
# Python does so itself only from 3.10.9/3.11.1.
LOG_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {ord("\\"): "\\\\"}


def viewer_root():
    """The viewer's files: the installed ``lenskit.viewer`` package, else the repository's ``viewer/`` folder."""
    try:
        root = resources.files(VIEWER_PACKAGE)
        if root.joinpath("index.html").is_file():
            return root
    except (ModuleNotFoundError, TypeError):
        pass
    root = Path(__file__).resolve().parent.parent / "viewer"
    if (root / "index.html").is_file():
        return root
    raise LenskitError("the viewer files are missing from this installation (lenskit.viewer); reinstall lenskit")


def scan(base: Path, filename: str) -> list[Path]:
    """Files called ``filename`` in ``base`` and in the folders up to :data:`SCAN_DEPTH` levels below it (sorted,
    breadth first; symlinked and hidden folders are not entered)."""
    found, level = [], [Path(base)]
    for depth in range(SCAN_DEPTH + 1):
        nxt = []
        for d in level:
            if (d / filename).is_file():
                found.append(d / filename)
            if depth < SCAN_DEPTH:
                try:
                    nxt.extend(sorted(c for c in d.iterdir()
                                      if c.is_dir() and not c.is_symlink() and not c.name.startswith(".")))
                except OSError:
                    continue
        level = nxt
    return found


def url_name(name: str) -> str:
    """A folder name fit for a URL and JSON: bytes that are not UTF-8 (lone surrogates in Python) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def find_runs(run_dirs: list[Path] | None = None, cwd: Path | None = None) -> dict[str, Path]:
    """Map run names to export.json paths.

    Named folders must each contain export.json (a path to an export.json file itself is accepted too). With none,
    the current folder and the folders up to :data:`SCAN_DEPTH` levels below it that hold one. Names are folder
    names, made unique with ``-2``, ``-3``, ...
    """
    found: list[Path] = []
    if run_dirs:
        for d in run_dirs:
            d = Path(d)
            f = d if d.is_file() and d.name.endswith(".json") else d / EXPORT_FILE
            if not d.exists():
                raise InputError(f"run folder not found: {d}")
            if d.is_dir() and not os.access(d, os.X_OK):  # its export.json cannot even be looked at
                raise InputError(f"cannot open run folder {d}: permission denied")
            if f.is_file() and not os.access(f, os.R_OK):
                raise InputError(f"cannot read {f}: permission denied")
            if not f.is_file():
                raise InputError(f"no {EXPORT_FILE} in {d} (run `lenskit export {d}` first)")
            found.append(f)
    else:
        base = Path(cwd or Path.cwd())
        found = scan(base, EXPORT_FILE)
        if not found:
            raise InputError(
                f"no runs found: no {EXPORT_FILE} in {base} or up to {SCAN_DEPTH} folders below it; "
                "name a run folder (lenskit serve RUN_DIR) or create one with `lenskit trace`"
            )
    return named_by_folder(found, "run")


def named_by_folder(files: list[Path], fallback: str) -> dict[str, Path]:
    """``{name: file}``, each named after its folder (URL-safe, :func:`url_name`); folders of the same name get
    ``-2``, ``-3``, ... so that none is dropped."""
    out: dict[str, Path] = {}
    for f in files:
        stem = url_name(Path(f).parent.resolve().name) or fallback
        name, n = stem, 1
        while name in out:
            n += 1
            name = f"{stem}-{n}"
        out[name] = Path(f)
    return out


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class Site:
    """Every URL the server answers, fixed at start-up; :meth:`get` answers one (decoded, exact-match) path."""

    def __init__(self, runs: dict[str, Path], viewer=None, compares: dict[str, Path] | None = None):
        self.runs = dict(runs)
        self.compares = dict(compares or {})  # `lenskit compare` folders: name -> compare.json (compare.html shows them)
        self.viewer = viewer if viewer is not None else viewer_root()
        self.routes: dict[str, tuple[str, object, object]] = {}  # url path -> (kind, file, folder it must stay in)
        viewer_root_at_start = _start_root(self.viewer)
        for sub in VIEWER_DIRS:
            folder = self.viewer.joinpath(sub) if sub else self.viewer
            if not folder.is_dir():
                continue
            for item in folder.iterdir():
                suffix = "." + item.name.rsplit(".", 1)[-1] if "." in item.name else ""
                if item.is_file() and suffix in VIEWER_SUFFIXES and not item.name.startswith("."):
                    self.routes["/" + (f"{sub}/" if sub else "") + item.name] = ("file", item, viewer_root_at_start)
        self.routes["/"] = self.routes.get("/index.html", ("missing", None, None))
        self.routes["/runs.json"] = ("runs", None, None)
        self.surveys: dict[str, Path] = {}  # survey runs (`lenskit survey`): their survey.json beside export.json
        for name, path in self.runs.items():
            self.routes[f"/runs/{name}/{EXPORT_FILE}"] = ("file", path, _start_root(Path(path).parent))
            survey = Path(path).parent / SURVEY_FILE
            if survey.is_file():
                self.surveys[name] = survey
                self.routes[f"/runs/{name}/{SURVEY_FILE}"] = ("file", survey, _start_root(survey.parent))
        for name, path in self.compares.items():
            self.routes[f"/compares/{name}/compare.json"] = ("file", path, _start_root(Path(path).parent))
        if not self.runs and self.compares and "/compare.html" in self.routes:
            self.routes["/"] = self.routes["/compare.html"]
        self._gz_cache: dict[tuple, bytes] = {}  # (path, stat key) -> gzip, least recently used first
        self._gz_bytes = 0
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Compress the runs' export.json now, until :data:`GZIP_CACHE_BYTES` is filled (a server calls it in a thread
        at start, so first loads are quick; thousands of runs must not fill the memory)."""
        for name in self.runs:
            if self._gz_bytes >= GZIP_CACHE_BYTES:
                break
            self.get(f"/runs/{quote(name)}/{EXPORT_FILE}", accept_gzip=True)

    def run_list(self) -> dict:
        """The ``/runs.json`` document: name and URL of each run (in the order given)."""
        return {
            "lenskit_version": __version__,
            "runs": [{"name": n, "url": f"runs/{quote(n)}/{EXPORT_FILE}",
                      **({"survey": f"runs/{quote(n)}/{SURVEY_FILE}"} if n in self.surveys else {})} for n in self.runs],
            **({"compares": [{"name": n, "url": f"compares/{quote(n)}/compare.json"} for n in self.compares]}
               if self.compares else {}),
        }

    def get(self, raw_path: str, accept_gzip: bool = False) -> Response:
        """Answer a GET for ``raw_path`` (query string ignored). Unknown paths, encoded or not, are 404."""
        try:
            path = unquote(urlsplit(raw_path).path, errors="strict")
        except (UnicodeDecodeError, ValueError):
            return Response(404, b"not found\n")
        kind, item, root = self.routes.get(path, ("missing", None, None))
        if kind == "runs":
            body, ctype = json.dumps(self.run_list(), ensure_ascii=False).encode("utf-8"), CONTENT_TYPES[".json"]
            mtime = None
        elif kind == "file":
            try:
                body, mtime = read_inside(item, root)
            except Outside:
                return Response(403, b"forbidden: the file leaves its folder or is not a regular file\n")
            except (OSError, RuntimeError):  # gone, unreadable, a symlink loop
                return Response(404, b"not found\n")
            ctype = CONTENT_TYPES.get("." + item.name.rsplit(".", 1)[-1], "application/octet-stream")
        else:
            return Response(404, b"not found\n")
        headers = {"Cache-Control": "no-cache"}
        if accept_gzip and ctype in GZIP_TYPES and len(body) >= GZIP_MIN_BYTES:
            body = self._gzip(path, mtime, body)
            headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        return Response(200, body, ctype, headers)

    def _gzip(self, path: str, mtime, body: bytes) -> bytes:
        if mtime is None:
            return gzip.compress(body, GZIP_LEVEL, mtime=0)
        key = (path, mtime)
        with self._lock:
            cached = self._gz_cache.pop(key, None)
            if cached is not None:
                self._gz_cache[key] = cached  # now the most recently used
        if cached is None:
            cached = gzip.compress(body, GZIP_LEVEL, mtime=0)
            with self._lock:
                for k in [k for k in self._gz_cache if k[0] == path]:  # the file's older versions
                    self._gz_bytes -= len(self._gz_cache.pop(k))
                self._gz_cache[key] = cached
                self._gz_bytes += len(cached)
                while self._gz_bytes > GZIP_CACHE_BYTES and len(self._gz_cache) > 1:
                    self._gz_bytes -= len(self._gz_cache.pop(next(iter(self._gz_cache))))
        return cached


class Outside(Exception):
    """A served file that resolves outside its folder, or is not a regular file (:func:`read_inside`)."""


def _start_root(folder):
    """The folder a served file must stay in, resolved once at start-up: swapping the folder itself for a symlink
    later moves nothing into it. Folders of a package not on a filesystem (a zip) are kept as they are."""
    return Path(folder).resolve() if isinstance(folder, Path) else folder


def read_inside(item, root) -> tuple[bytes, object]:
    """``(bytes, stat key)`` of ``item`` if it is, symlinks resolved, a regular file inside ``root`` (resolved at
    start-up), else :class:`Outside`; ``OSError`` if it is gone or unreadable. The file is opened once, not following
    a last symlink and without blocking (a FIFO does not hang the thread), and the opened file itself is checked (a
    regular file, still the one its path resolves to inside ``root``), so a swap between the check and the read is
    refused. Files of a package not on a filesystem (a zip) have no symlinks to follow: read as they are."""
    if not isinstance(item, Path):
        return item.read_bytes(), None
    real = item.resolve(strict=True)
    if Path(root) not in real.parents:
        raise Outside(item)
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_BINARY", 0))
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        again = item.resolve(strict=True)  # a folder on the way swapped for a symlink after the first check
        if not stat.S_ISREG(st.st_mode) or Path(root) not in again.parents or not os.path.samestat(st, again.stat()):
            raise Outside(item)
        return f.read(), (st.st_mtime_ns, st.st_size)


def allowed_hosts(host: str, port: int) -> set[str]:
    """``Host`` header values a server bound to ``host:port`` answers: the bound address and the loopback names,
    each with and without the port. For a wildcard bind (0.0.0.0, ::) any IP literal is allowed too (see
    :func:`host_allowed`), but never another DNS name."""
    names = {"localhost", "127.0.0.1", "[::1]", host if ":" not in host else f"[{host}]"}
    return {n.lower() for n in names} | {f"{n}:{port}".lower() for n in names}


def accepts_gzip(header: str) -> bool:
    """Does an ``Accept-Encoding`` value accept gzip: ``gzip`` (any case) with no ``q`` or ``q`` above 0? ``gzip;q=0``
    (or a ``q`` that is not a number) refuses it; ``*`` is not taken up (the plain body is always acceptable)."""
    for part in header.split(","):
        coding, *params = part.split(";")
        if coding.strip().lower() != "gzip":
            continue
        q = "1"
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                q = value.strip()
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False


def host_allowed(header: str | None, allowed: set[str], wildcard: bool) -> bool:
    """The DNS-rebinding guard: is this request's ``Host`` one the server was started for?"""
    if not header:
        return False
    value = header.strip().lower()
    if value in allowed:
        return True
    if not wildcard:
        return False
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 or value.startswith("[") else value
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


class HeadTooLarge(Exception):
    """A request's line and headers together are over :data:`MAX_HEAD_BYTES` (:class:`_DeadlineReader`)."""


class _DeadlineReader(io.RawIOBase):
    """A connection's reads for :class:`Handler`: each ``recv`` waits at most ``idle`` seconds and never past
    ``deadline`` (a :func:`time.monotonic` time, or None). A per-read timeout alone starts again at every byte, so a
    client dripping its headers a byte at a time would hold the thread for ever; the deadline bounds the whole. While
    a deadline is set at most ``budget`` bytes more are read (then :class:`HeadTooLarge`): http.server's own limits
    (100 headers of 64 KiB) would let each connection fill 6 MB and more."""

    def __init__(self, sock: socket.socket, idle: float | None):
        self.sock, self.idle, self.deadline, self.budget = sock, idle, None, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        wait = self.idle
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request line and headers did not arrive in time")
            if self.budget <= 0:
                raise HeadTooLarge()
            wait = left if wait is None else min(wait, left)
            buf = memoryview(buf)[:self.budget]
        self.sock.settimeout(wait)
        n = self.sock.recv_into(buf)
        if self.deadline is not None:
            self.budget -= n
        return n


class Handler(BaseHTTPRequestHandler):
    """GET/HEAD over a :class:`Site` (set as ``server.site``); quiet unless ``server.verbose``."""

    server_version = f"lenskit/{__version__}"
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # a malformed request line gets a 400 with a status line and headers
    timeout = 30  # seconds a connection may sit idle mid-request (or between keep-alive requests) before it is closed

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # socketserver's reader: an open one would keep the socket from closing
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # The deadline counts from the wait for the request line: a keep-alive connection idles within it too.
        self._reader.deadline = time.monotonic() + self.server.request_deadline
        self._reader.budget = MAX_HEAD_BYTES
        try:
            super().handle_one_request()
        except HeadTooLarge:
            self._reader.deadline = None
            self.connection.settimeout(self.timeout)
            self.close_connection = True
            self.send_error(431, "Request header fields too large")

    def parse_request(self) -> bool:
        words = str(self.raw_requestline, "iso-8859-1").split()  # split as http.server does (\x85, \xa0 too)
        if len(words) == 2:  # HTTP/0.9 ("GET /"): the answer would be a bare body, no status line nor headers
            self.close_connection = True
            return False
        ok = super().parse_request()
        self._reader.deadline = None  # all is read (a body never is); writes get the plain per-send timeout back
        self.connection.settimeout(self.timeout)
        if ok and self.request_version == "HTTP/0.9":  # "GET / HTTP/0.9": the same bare answer
            self.close_connection = True
            return False
        return ok

    def handle_expect_100(self) -> bool:
        return True  # a body is never read: no "100 Continue" invites one, the final answer comes at once

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        if self.request_version == "HTTP/0.9":  # an HTTP/0.9 answer has no status line nor headers: none is sent
            self.close_connection = True
            return
        super().send_error(code, message, explain)

    def end_headers(self) -> None:
        """Every answer's headers end here, :meth:`send_error`'s too: the security headers go on all of them once."""
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _refuse_method(self) -> None:
        self.close_connection = True  # the request body, if any, is not read
        self._send(Response(405, b"only GET and HEAD\n", headers={"Allow": "GET, HEAD"}), send_body=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method  # noqa: N815

    def _answer(self, send_body: bool) -> None:
        srv = self.server
        if self.headers.get_all("Transfer-Encoding") or any(
                v.strip() != "0" for v in self.headers.get_all("Content-Length") or []):
            self.close_connection = True  # a body is not read: closing keeps it from being taken for a next request
        hosts = self.headers.get_all("Host") or []
        try:
            target = urlsplit(self.path)
        except ValueError:  # e.g. an unclosed "[" in an absolute-form target
            target = urlsplit("//invalid")
        if (len(hosts) != 1 or not host_allowed(hosts[0], srv.allowed_hosts, srv.wildcard)  # two: which one counts?
                or ((target.scheme or target.netloc)  # absolute form: its authority is the host that counts
                    and not host_allowed(target.netloc, srv.allowed_hosts, srv.wildcard))):
            self._send(Response(403, b"forbidden: this server answers only for its own address (Host)\n"), send_body)
            return
        gz = accepts_gzip(self.headers.get("Accept-Encoding", ""))
        self._send(srv.site.get(self.path, accept_gzip=gz), send_body)

    def _send(self, res: Response, send_body: bool) -> None:
        self.send_response(res.status)
        self.send_header("Content-Type", res.content_type)
        self.send_header("Content-Length", str(len(res.body)))
        for k, v in res.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            try:
                self.wfile.write(res.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if getattr(self.server, "verbose", False):
            sys.stderr.write(f"{self.address_string()} - - [{self.log_date_time_string()}] "
                             f"{(format % args).translate(LOG_ESCAPES)}\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 drops a burst of connections (SYN retried after a second)
    max_connections = 64  # served at once (a thread each); the next are answered 503 (a browser opens about 6)
    request_deadline = 30.0  # seconds for a request's line and headers to arrive in all, however slowly they drip

    def __init__(self, site: Site, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False):
        self.site = site
        self.verbose = verbose
        self.active = 0  # connections being served now (their threads)
        self._active_lock = threading.Lock()
        self.wildcard = host in ("0.0.0.0", "::", "")
        if ":" in host:  # an IPv6 address (::1, ::): the socket must be AF_INET6 to bind it
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OutputError(f"port {port} on {host} is in use; choose another with --port (0 picks a free one)") from None
            raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        except (OverflowError, UnicodeError, ValueError) as e:
            raise InputError(f"cannot listen on {host}:{port}: {e}") from None
        self.allowed_hosts = allowed_hosts(host, self.server_address[1])

    def process_request(self, request, client_address) -> None:
        """A thread for the connection, unless :attr:`max_connections` are being served: then a 503 and close, from
        this (the accepting) thread, without waiting on the client, so thousands of idle sockets hold no threads."""
        with self._active_lock:
            full = self.active >= self.max_connections
            if not full:
                self.active += 1
        if full:
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started (none left): the slot is free again
            self._release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._active_lock:
            self.active -= 1

    def _refuse_busy(self, request) -> None:
        request.setblocking(False)  # the few bytes fit the new socket's buffer; a client is never waited on
        try:
            request.recv(65536)  # what was sent already: unread, closing would reset the connection, losing the 503
        except OSError:
            pass
        try:
            request.send(BUSY_ANSWER)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """A client that closed or reset its connection (mid-answer, or between keep-alive requests) is not an error:
        no traceback. Anything else is reported as socketserver does."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"
