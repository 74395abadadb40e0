"""Loopback static server for the viewer: the packaged ``lenskit.viewer`` files and the named runs' export.json.

Nothing is resolved from the request path on disk: at start-up :class:`Site` builds a table of every URL it will
answer (each viewer file, ``/runs.json``, ``/runs/<name>/export.json``) and a request is an exact lookup in that table
after percent-decoding, so ``/../``, ``%2e%2e/`` and friends simply find nothing (404). Each registered file is
resolved again, symlinks and all (``Path.resolve(strict=True)``), when it is served: one that leaves its run folder
(or the viewer's folder) is refused (403). Requests whose ``Host`` is not the bound address or ``localhost`` are
refused, as are requests with no or several ``Host`` headers (a DNS-rebinding guard: a web page cannot make the
browser read exports through a name it controls), and only GET and HEAD are answered. A connection idle for
``Handler.timeout`` seconds mid-request is closed, so a client that never finishes its request holds no thread. JSON is gzip-compressed when the client accepts it. :meth:`Site.get` answers one
path without sockets (``lenskit serve --get PATH``).
"""

from __future__ import annotations

import errno
import gzip
import ipaddress
import json
import threading
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
        for sub in VIEWER_DIRS:
            folder = self.viewer.joinpath(sub) if sub else self.viewer
            if not folder.is_dir():
                continue
            for item in folder.iterdir():
                suffix = "." + item.name.rsplit(".", 1)[-1] if "." in item.name else ""
                if item.is_file() and suffix in VIEWER_SUFFIXES and not item.name.startswith("."):
                    self.routes["/" + (f"{sub}/" if sub else "") + item.name] = ("file", item, self.viewer)
        self.routes["/"] = self.routes.get("/index.html", ("missing", None, None))
        self.routes["/runs.json"] = ("runs", None, None)
        self.surveys: dict[str, Path] = {}  # survey runs (`lenskit survey`): their survey.json beside export.json
        for name, path in self.runs.items():
            self.routes[f"/runs/{name}/{EXPORT_FILE}"] = ("file", path, Path(path).parent)
            survey = Path(path).parent / SURVEY_FILE
            if survey.is_file():
                self.surveys[name] = survey
                self.routes[f"/runs/{name}/{SURVEY_FILE}"] = ("file", survey, survey.parent)
        for name, path in self.compares.items():
            self.routes[f"/compares/{name}/compare.json"] = ("file", path, Path(path).parent)
        if not self.runs and self.compares and "/compare.html" in self.routes:
            self.routes["/"] = self.routes["/compare.html"]
        self._gz_cache: dict[tuple, bytes] = {}
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Compress every run's export.json now (a server calls it in a thread at start, so first loads are quick)."""
        for name in self.runs:
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
            if not contained(item, root):
                return Response(403, b"forbidden: the file leaves its folder\n")
            try:
                body = item.read_bytes()
            except OSError:
                return Response(404, b"not found\n")
            ctype = CONTENT_TYPES.get("." + item.name.rsplit(".", 1)[-1], "application/octet-stream")
            mtime = _stat_key(item)
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
            cached = self._gz_cache.get(key)
        if cached is None:
            cached = gzip.compress(body, GZIP_LEVEL, mtime=0)
            with self._lock:
                self._gz_cache = {k: v for k, v in self._gz_cache.items() if k[0] != path}
                self._gz_cache[key] = cached
        return cached


def contained(item, root) -> bool:
    """Is ``item``, symlinks resolved, a regular file inside ``root`` (also resolved)? Files of an installed package
    that are not on a filesystem (a zip) have no symlinks to follow and count as contained."""
    if not isinstance(item, Path):
        return True
    try:
        real = item.resolve(strict=True)
        base = Path(root).resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return real.is_file() and base in real.parents


def allowed_hosts(host: str, port: int) -> set[str]:
    """``Host`` header values a server bound to ``host:port`` answers: the bound address and the loopback names,
    each with and without the port. For a wildcard bind (0.0.0.0, ::) any IP literal is allowed too (see
    :func:`host_allowed`), but never another DNS name."""
    names = {"localhost", "127.0.0.1", "[::1]", host if ":" not in host else f"[{host}]"}
    return {n.lower() for n in names} | {f"{n}:{port}".lower() for n in names}


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


def _stat_key(item):
    try:
        st = item.stat()
        return (st.st_mtime_ns, st.st_size)
    except (AttributeError, OSError):
        return None  # a Traversable without stat(): compress every time


class Handler(BaseHTTPRequestHandler):
    """GET/HEAD over a :class:`Site` (set as ``server.site``); quiet unless ``server.verbose``."""

    server_version = f"lenskit/{__version__}"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may sit idle mid-request (or between keep-alive requests) before it is closed

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
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or not host_allowed(hosts[0], srv.allowed_hosts, srv.wildcard):  # two: which one counts?
            self._send(Response(403, b"forbidden: this server answers only for its own address (Host)\n"), send_body)
            return
        accept = self.headers.get("Accept-Encoding", "")
        gz = any(part.split(";")[0].strip() == "gzip" for part in accept.split(","))
        self._send(srv.site.get(self.path, accept_gzip=gz), send_body)

    def _send(self, res: Response, send_body: bool) -> None:
        self.send_response(res.status)
        self.send_header("Content-Type", res.content_type)
        self.send_header("Content-Length", str(len(res.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")
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
            super().log_message(format, *args)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, site: Site, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False):
        self.site = site
        self.verbose = verbose
        self.wildcard = host in ("0.0.0.0", "::", "")
        try:
            super().__init__((host, port), Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OutputError(f"port {port} on {host} is in use; choose another with --port (0 picks a free one)") from None
            raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        except (OverflowError, UnicodeError, ValueError) as e:
            raise InputError(f"cannot listen on {host}:{port}: {e}") from None
        self.allowed_hosts = allowed_hosts(host, self.server_address[1])

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"
