"""``lenskit serve`` and :mod:`lenskit.server` without a browser; the single-file report's inlining (:mod:`lenskit.report`).

Path containment is tested on :meth:`Site.get` (what ``--get`` uses) and over a real socket with raw request lines,
since HTTP clients normalise ``..`` away before sending.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lenskit.cli import app
from lenskit.errors import InputError, OutputError
from lenskit.server import Server, Site, find_runs

sys.path.insert(0, str(Path(__file__).parent))
from viewer_fixture import make_export, write_run  # noqa: E402

TRAVERSALS = [
    "/../pyproject.toml",
    "/%2e%2e/pyproject.toml",
    "/%2E%2E/%2E%2E/etc/passwd",
    "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/js/../../lenskit/server.py",
    "/js/%2e%2e/%2e%2e/lenskit/server.py",
    "/js/..%2f..%2flenskit%2fserver.py",
    "/runs/../../../etc/passwd",
    "/runs/synth/../../../pyproject.toml",
    "/runs/synth/%2e%2e/export.json",
    "/runs/synth%2f..%2fsynth/export.json",
    "/..%5c..%5cpyproject.toml",
    "/js\\..\\..\\lenskit\\server.py",
    "//etc/passwd",
    "/etc/passwd",
    "/__init__.py",
    "/viewer/index.html",
    "/js/",
    "/runs/",
    "/runs/synth/",
    "/runs/synth/trace.safetensors",
    "/%00",
    "/index.html%00.js",
    "/%ff%fe",
    "/./index.html",
    "/index.html/",
]


@pytest.fixture(scope="module")
def doc():
    return make_export(prompts=1, positions=6, layers=2, vocab_size=120)


@pytest.fixture()
def runs_dir(tmp_path, doc):
    write_run(tmp_path / "runs" / "synth", doc)
    (tmp_path / "runs" / "synth" / "trace.safetensors").write_bytes(b"secret")
    (tmp_path / "pyproject.toml").write_text("secret")
    return tmp_path


@pytest.fixture()
def site(runs_dir):
    return Site(find_runs([runs_dir / "runs" / "synth"]))


@pytest.fixture()
def server(site):
    srv = Server(site, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)  # quick shutdown
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def raw_get(srv, target: str, headers: dict | None = None):
    """Send a request line exactly as given (no client-side normalisation)."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("GET", target, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res, body


# ---- runs discovery


def test_find_runs_named_and_deduplicated(tmp_path, doc):
    a = write_run(tmp_path / "a" / "run", doc)
    b = write_run(tmp_path / "b" / "run", doc)
    runs = find_runs([a, b])
    assert list(runs) == ["run", "run-2"]
    assert runs["run"] == a / "export.json"


def test_find_runs_scans_two_levels(tmp_path, doc):
    write_run(tmp_path / "runs" / "one", doc)
    write_run(tmp_path / "two", doc)
    write_run(tmp_path / "x" / "y" / "too-deep", doc)
    assert sorted(find_runs(cwd=tmp_path)) == ["one", "two"]


def test_find_runs_errors(tmp_path):
    with pytest.raises(InputError, match="no runs found"):
        find_runs(cwd=tmp_path)
    with pytest.raises(InputError, match="not found"):
        find_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no export.json"):
        find_runs([tmp_path / "empty"])


def test_find_runs_unreadable(tmp_path, doc, monkeypatch):
    """A folder that cannot be entered, or an export.json that cannot be read, is said so (not "no export.json"):
    os.access is patched, as root reads everything."""
    run = write_run(tmp_path / "run", doc)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != run and real_access(p, mode, **kw))
    with pytest.raises(InputError, match=r"cannot open run folder .*run: permission denied"):
        find_runs([run])
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p).name != "export.json" and real_access(p, mode, **kw))
    with pytest.raises(InputError, match=r"cannot read .*export.json: permission denied"):
        find_runs([run])


# ---- what is served


def test_site_serves_viewer_and_runs(site, runs_dir):
    index = site.get("/")
    assert index.status == 200 and index.content_type.startswith("text/html")
    assert b'src="js/main.js"' in index.body
    assert site.get("/index.html").body == index.body
    for path in ("/style.css", "/js/main.js", "/js/data.js", "/vendor/d3.min.js"):
        assert site.get(path).status == 200, path
    assert site.get("/js/main.js").content_type.startswith("text/javascript")
    listing = json.loads(site.get("/runs.json").body)
    assert listing["runs"] == [{"name": "synth", "url": "runs/synth/export.json"}]
    res = site.get("/runs/synth/export.json?x=1")
    assert res.status == 200 and res.content_type == "application/json"
    assert res.body == (runs_dir / "runs" / "synth" / "export.json").read_bytes()


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_is_404(site, path):
    assert site.get(path).status == 404


def test_traversal_over_socket_is_404(server):
    for path in TRAVERSALS:
        if "\\" in path:
            continue  # not a valid request target for http.client; covered by Site.get above
        res, body = raw_get(server, path)
        assert res.status == 404, path
        assert b"secret" not in body and b"root:" not in body


def test_gzip_when_accepted(server, runs_dir):
    plain = (runs_dir / "runs" / "synth" / "export.json").read_bytes()
    res, body = raw_get(server, "/runs/synth/export.json", {"Accept-Encoding": "gzip, deflate"})
    assert res.status == 200
    assert res.getheader("Content-Encoding") == "gzip"
    assert len(body) < len(plain)
    assert gzip.decompress(body) == plain
    res, body = raw_get(server, "/runs/synth/export.json")
    assert res.getheader("Content-Encoding") is None and body == plain
    res, body = raw_get(server, "/runs/synth/export.json", {"Accept-Encoding": "br;q=1, gzip;q=0.5"})
    assert res.getheader("Content-Encoding") == "gzip"


def test_headers_lock_down_the_page(server):
    res, _ = raw_get(server, "/")
    csp = res.getheader("Content-Security-Policy")
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert res.getheader("X-Content-Type-Options") == "nosniff"


def test_port_in_use_is_a_one_line_error(site):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        with pytest.raises(OutputError, match=r"port \d+ on 127.0.0.1 is in use"):
            Server(site, "127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()


# ---- the command


def test_cli_get(runs_dir, monkeypatch):
    monkeypatch.chdir(runs_dir)
    runner = CliRunner()
    res = runner.invoke(app, ["serve", "--get", "/runs.json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["runs"][0]["name"] == "synth"
    res = runner.invoke(app, ["serve", "runs/synth", "--get", "/runs/synth/export.json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["schema"].startswith("lenskit.export/")
    res = runner.invoke(app, ["serve", "--get", "/%2e%2e/pyproject.toml"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == ["lenskit: error: GET /%2e%2e/pyproject.toml: 404 not found"]


def test_cli_no_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["serve", "--get", "/"])
    assert res.exit_code == 1
    assert res.output.startswith("lenskit: error: no runs found")
    assert "Traceback" not in res.output


def test_cli_port_0_serves_and_stops_on_ctrl_c(runs_dir):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from lenskit.cli import main; main()", "serve", "--port", "0"],
        cwd=runs_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert port != 8000
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/runs.json")
        assert json.loads(conn.getresponse().read())["runs"][0]["name"] == "synth"
        conn.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "stopped" in err


# ---- the single-file report (no browser; tests/test_viewer_browser.py opens it)


def test_write_html_inlines_everything_safely(tmp_path, doc):
    from lenskit.report import DATA_ID, write_html

    path = write_html(doc, tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert not list(tmp_path.glob(".report.html.*"))  # written atomically, temp file gone
    # Nothing is loaded from elsewhere.
    assert not re.search(r'<(script|link)[^>]+(src|href)="(?!data:)', text)
    assert "modulepreload" not in text
    # Hostile token texts cannot end the data element: exactly one </script> per <script.
    assert text.lower().count("<script") == text.lower().count("</script>") == 3
    m = re.search(rf'<script type="application/json" id="{DATA_ID}"[^>]*>(.*?)</script>', text, flags=re.S)
    assert m and "<" not in m.group(1) and "\u2028" not in m.group(1)
    assert json.loads(m.group(1)) == json.loads(json.dumps(doc))
    assert "</script>" in doc["tokens"]  # the fixture really is hostile
    # the viewer finds the data element by the same id (one constant written in Python and in JS)
    from lenskit.server import viewer_root

    js = (Path(str(viewer_root())) / "js" / "data.js").read_text(encoding="utf-8")
    assert f'export const EMBEDDED_ID = "{DATA_ID}";' in js


# ---- hostile clients and folders changing while serving (lenskit/server.py's Handler, Server, read_inside)


def _reset(sock) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a browser tab closed mid-load may."""
    import struct

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_client_that_goes_away_prints_no_traceback(server, capfd):
    """A reset before the answer's headers are written, or while waiting for a keep-alive request, is no error."""
    import time

    addr = server.server_address[:2]
    for _ in range(10):
        sock = socket.create_connection(addr, timeout=10)
        sock.sendall(b"GET /runs/synth/export.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        _reset(sock)
    sock = socket.create_connection(addr, timeout=10)
    sock.sendall(b"GET /runs.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.recv(65536)
    time.sleep(0.2)  # the server now waits for the next request on this connection
    _reset(sock)
    time.sleep(0.5)
    assert raw_get(server, "/runs.json")[0].status == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err[-2000:]


@pytest.mark.parametrize("value, gz", [("gzip", True), ("GZIP", True), ("br, gzip;q=0.5", True), ("gzip;q=0", False),
                                       ("deflate, gzip; q=0.0", False), ("gzip;q=junk", False), ("*", False),
                                       ("identity", False), ("", False)])
def test_accept_encoding_q_values(value, gz):
    from lenskit.server import accepts_gzip

    assert accepts_gzip(value) is gz


def test_gzip_q0_is_not_sent_gzip(server, runs_dir):
    plain = (runs_dir / "runs" / "synth" / "export.json").read_bytes()
    res, body = raw_get(server, "/runs/synth/export.json", {"Accept-Encoding": "gzip;q=0"})
    assert res.getheader("Content-Encoding") is None and body == plain


def test_absolute_form_target_names_the_host(server):
    """``GET http://evil.example/...`` names its host in the target (RFC 9112 3.2.2): it is checked like Host."""
    port = server.server_address[1]
    for target in ("http://evil.example/runs.json", f"http://evil.example:{port}/runs.json", "http:/runs.json",
                   f"http://user@127.0.0.1:{port}/runs.json"):
        res, body = raw_get(server, target)
        assert res.status == 403 and b"lenskit_version" not in body, target
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:  # http.client cannot send this one
        sock.sendall(b"GET http://[::1/runs.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 403")
    res, body = raw_get(server, f"http://127.0.0.1:{port}/runs.json")
    assert res.status == 200 and b"lenskit_version" in body


def test_a_body_on_get_is_not_taken_for_a_next_request(server):
    """A GET's body is not read: the connection is closed after the answer, so the body is never parsed as a
    request of its own (here one for another Host)."""
    inner = b"GET /runs.json HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    for framing in (b"Content-Length: %d\r\n" % len(inner), b"Transfer-Encoding: chunked\r\n"):
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            sock.sendall(b"GET /runs.json HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing + b"\r\n" + inner)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 200"), data[:200]


def test_files_changed_while_serving(tmp_path, doc):
    """Deleted: 404. A FIFO: refused at once (never waited on). The run folder swapped for a symlink to another
    folder with an export.json: refused, as the folder given was resolved at start-up."""
    run = write_run(tmp_path / "run", doc)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "export.json").write_text('{"secret": 1}')
    site = Site(find_runs([run]))
    url = "/runs/run/export.json"
    assert site.get(url).status == 200
    (run / "export.json").rename(tmp_path / "saved.json")
    assert site.get(url).status == 404
    if hasattr(os, "mkfifo"):
        os.mkfifo(run / "export.json")
        answer = []
        reader = threading.Thread(target=lambda: answer.append(site.get(url)), daemon=True)
        reader.start()
        reader.join(5)
        assert answer and answer[0].status == 403
        (run / "export.json").unlink()
    (tmp_path / "saved.json").rename(run / "export.json")
    run.rename(tmp_path / "run.real")
    run.symlink_to(tmp_path / "other", target_is_directory=True)
    res = site.get(url)
    assert res.status == 403 and b"secret" not in res.body


@pytest.mark.parametrize("swap", ["symlink", "fifo", "folder"])
def test_a_swap_between_check_and_open_is_refused(tmp_path, doc, monkeypatch, swap):
    """The file is swapped just before it is opened (after its path was checked): a symlink out of the folder, a FIFO,
    or the run folder itself for a symlink to another folder. Nothing outside is served and nothing hangs."""
    import lenskit.server as server_mod

    run = write_run(tmp_path / "run", doc)
    secret = tmp_path / "other" / "export.json"
    secret.parent.mkdir()
    secret.write_text('{"secret": 1}')
    site = Site(find_runs([run]))
    real_open = os.open

    def swapping_open(path, flags, *args):
        if swap == "symlink":
            (run / "export.json").unlink()
            (run / "export.json").symlink_to(secret)
        elif swap == "fifo":
            (run / "export.json").unlink()
            os.mkfifo(run / "export.json")
        else:
            run.rename(tmp_path / "run.real")
            run.symlink_to(secret.parent, target_is_directory=True)
        monkeypatch.setattr(server_mod.os, "open", real_open)
        return real_open(path, flags, *args)

    if swap == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    monkeypatch.setattr(server_mod.os, "open", swapping_open)
    answer = []
    reader = threading.Thread(target=lambda: answer.append(site.get("/runs/run/export.json")), daemon=True)
    reader.start()
    reader.join(5)
    assert answer, "the read hung"
    assert answer[0].status in (403, 404) and b"secret" not in answer[0].body


def test_gzip_cache_is_bounded(tmp_path, doc, monkeypatch):
    """Thousands of runs: warm() stops when the cache is full and the cache drops its least recently used."""
    import lenskit.server as server_mod

    runs = [write_run(tmp_path / f"r{i}", doc) for i in range(4)]
    site = Site(find_runs(runs))
    one = len(site.get("/runs/r0/export.json", accept_gzip=True).body)
    site = Site(find_runs(runs))
    monkeypatch.setattr(server_mod, "GZIP_CACHE_BYTES", 2 * one)
    site.warm()
    assert len(site._gz_cache) == 2 and site._gz_bytes == 2 * one
    for i in range(4):
        res = site.get(f"/runs/r{i}/export.json", accept_gzip=True)
        assert gzip.decompress(res.body) == (runs[i] / "export.json").read_bytes()
    assert len(site._gz_cache) == 2 and site._gz_bytes <= 2 * one


def test_ipv6_host_binds(site):
    """``--host ::1`` needs an AF_INET6 socket (socketserver's default is AF_INET)."""
    probe = socket.socket(socket.AF_INET6) if socket.has_ipv6 else None
    try:
        probe.bind(("::1", 0))
    except (OSError, AttributeError):
        pytest.skip("no IPv6 loopback here")
    finally:
        if probe is not None:
            probe.close()
    srv = Server(site, "::1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert srv.url.startswith("http://[::1]:")
        conn = http.client.HTTPConnection("::1", srv.server_address[1], timeout=10)
        conn.request("GET", "/runs.json")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()


# ---- slow, many and malformed clients over raw sockets (Handler.parse_request, end_headers; Server.process_request)


def exchange(srv, data: bytes, timeout: float = 5) -> bytes:
    """Send ``data`` as it is, then read until the server closes the connection."""
    with socket.create_connection(srv.server_address[:2], timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def header_lines(answer: bytes) -> list[str]:
    return answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]


def _wait_for(predicate, seconds: float = 3) -> None:
    import time

    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


def test_a_dripped_request_is_dropped_at_its_deadline(server, capfd):
    """Slowloris: a header byte every 50 ms never lets a read time out (Handler.timeout is 30 s), but the request line
    and headers must all arrive within Server.request_deadline: the connection is closed then, unanswered and quietly.
    A connection that sends nothing at all is closed at the same deadline."""
    import time

    server.request_deadline = 0.5
    with socket.create_connection(server.server_address[:2], timeout=5) as idle, \
            socket.create_connection(server.server_address[:2], timeout=5) as sock:
        sock.sendall(b"GET /runs.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ")
        sock.settimeout(0.05)
        t0, got, closed = time.monotonic(), b"", False
        while time.monotonic() - t0 < 5:
            try:
                sock.send(b"a")
                chunk = sock.recv(1024)
            except TimeoutError:
                continue
            except OSError:  # reset, or a send after the close
                closed = True
                break
            got += chunk
            if not chunk:
                closed = True
                break
        assert closed and got == b"" and time.monotonic() - t0 < 2
        assert idle.recv(1024) == b""
    _wait_for(lambda: server.active == 0)
    assert raw_get(server, "/runs.json")[0].status == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err[-2000:]


def test_connections_beyond_the_cap_are_answered_503(server):
    """At Server.max_connections open connections (idle here) the next one is answered 503 at once, with the security
    headers, and closed; a connection that ends frees its place."""
    server.max_connections = 2
    addr = server.server_address[:2]
    idle = [socket.create_connection(addr, timeout=5) for _ in range(2)]
    try:
        _wait_for(lambda: server.active == 2)
        answer = exchange(server, b"")
        assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"try again\n"), answer[:200]
        assert sum(line.startswith("Content-Security-Policy: ") for line in header_lines(answer)) == 1
        answer = exchange(server, b"GET /runs.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ") and b"lenskit_version" not in answer
    finally:
        for sock in idle:
            sock.close()
    _wait_for(lambda: server.active == 0)
    assert raw_get(server, "/runs.json")[0].status == 200


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
    (b"GET / HTTP/x\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"BREW / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(120)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"y" * 3000) for i in range(60))
     + b"\r\n", 431),  # under http.server's limits (100 lines of 64 KiB), over MAX_HEAD_BYTES in all
    (b"GET / HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
    (b"TRACE / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    (b"GET /runs.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 200),
])
def test_every_answer_carries_the_security_headers_once(server, request_bytes, status):
    """Python's own error pages (send_error) included: each header once, whichever path wrote the answer."""
    answer = exchange(server, request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    lines = header_lines(answer)
    for name in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "Cross-Origin-Resource-Policy"):
        assert sum(line.lower().startswith(name.lower() + ":") for line in lines) == 1, (name, lines)
    assert "X-Content-Type-Options: nosniff" in lines


@pytest.mark.parametrize("request_bytes", [b"GET /\r\n", b"GET /runs.json\r\n\r\n", b"GET / HTTP/0.9\r\n\r\n",
                                           b"GET /runs.json HTTP/0.9\r\nHost: 127.0.0.1\r\n\r\n",
                                           b"GET\x85/index.html\r\n\r\n", b"POST /\r\n\r\n"])
def test_http09_is_not_answered(server, request_bytes):
    """An HTTP/0.9 answer is a bare body, no status line nor headers (no CSP, no nosniff): nothing is sent at all.
    (``\\x85`` splits a request line for http.server as a space does.)"""
    assert exchange(server, request_bytes) == b""


@pytest.mark.parametrize("path", ["/runs/synth/export.json", "/", "/js/main.js", "/nope", "/%2e%2e/pyproject.toml"])
@pytest.mark.parametrize("encoding", [b"", b"Accept-Encoding: gzip\r\n"])
def test_head_answers_as_get_without_the_body(server, path, encoding):
    """HEAD's status and headers (Content-Length and Content-Encoding included) are GET's; it has no body."""
    def ask(method):
        answer = exchange(server, b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close\r\n\r\n"
                          % (method, path.encode(), encoding))
        head, body = answer.split(b"\r\n\r\n", 1)
        return re.sub(rb"\r\nDate: [^\r]*", b"", head), body

    (get_head, get_body), (head_head, head_body) = ask(b"GET"), ask(b"HEAD")
    assert head_head == get_head and head_body == b""
    assert f"Content-Length: {len(get_body)}".encode() in get_head


def test_expect_100_continue_gets_the_answer_at_once(server):
    """A body is never read, so no "100 Continue" asks for one: the one answer is the final one."""
    answer = exchange(server, b"GET /runs.json HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                              b"Content-Length: 5\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1


def test_pipelined_requests_are_each_answered(server):
    """Many requests sent at once on one connection: each is answered in turn (each has its own deadline and size
    budget for its head, however much of the following ones was read with it)."""
    one = b"GET /runs.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer = exchange(server, one * 200 + b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 200 and answer.count(b"HTTP/1.1 404 ") == 1


def test_verbose_log_escapes_control_characters(site, capfd):
    """``--verbose`` writes each request line to the terminal: a client's escape sequences are written escaped
    (Python itself does so only from 3.10.9/3.11.1)."""
    srv = Server(site, "127.0.0.1", 0, verbose=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        exchange(srv, b"GET /\x1b]0;owned\x07\x1b[2J HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    finally:
        srv.shutdown()
        srv.server_close()
    err = capfd.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert r"GET /\x1b]0;owned\x07\x1b[2J HTTP/1.1" in err


def test_write_html_refuses_what_is_not_a_report(tmp_path, doc):
    """Called as a library (no command checked the path first): a FIFO, a dangling link, an export or a user's page
    is refused with one line and left as it was; a folder too."""
    from lenskit.report import write_html

    (tmp_path / "folder.html").mkdir()
    (tmp_path / "dangling.html").symlink_to(tmp_path / "nowhere")
    (tmp_path / "export.json").write_text('{"schema":"lenskit.export/1"}')
    (tmp_path / "mine.html").write_text("<p>mine</p>")
    names = ["folder.html", "dangling.html", "export.json", "mine.html"]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.html")
        names.append("pipe.html")
    for name in names:
        with pytest.raises(OutputError):
            write_html(doc, tmp_path / name)
    assert (tmp_path / "mine.html").read_text() == "<p>mine</p>" and (tmp_path / "dangling.html").is_symlink()
    first = write_html(doc, tmp_path / "report.html")
    assert write_html(doc, first) == first  # its own report is replaced
