"""``lenskit serve``: show runs in the browser (a loopback server over the viewer and the runs' export.json)."""

from __future__ import annotations

import ipaddress
import sys
import threading
import webbrowser
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import LenskitError


def serve(
    run_dirs: Optional[List[Path]] = typer.Argument(
        None,
        metavar="RUN_DIR",
        help="Run folders holding export.json (or compare.json). None: those in the current folder and up to 2 levels "
        "below it.",
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host",
        help="Interface to listen on (default: this machine only). 0.0.0.0 makes every served prompt visible to the "
        "network.",
    ),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="Port; 0 picks a free one."),
    open_browser: bool = typer.Option(False, "--open/--no-open", help="Open the viewer in the default browser."),
    get: Optional[str] = typer.Option(
        None, "--get", metavar="PATH", help="Print the response body for one path (e.g. /runs.json) and exit; no socket."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every request on stderr."),
    compare: bool = typer.Option(
        False, "--compare",
        help="With exactly two RUN_DIRs: compare them (as `lenskit compare RUN_A RUN_B`, default options, kept in a "
        "temporary folder) and open on the compare page. A RUN_DIR holding a compare.json is served as a comparison.",
    ),
    lens: Optional[List[str]] = typer.Option(
        None, "--lens",
        help="With --compare: the lens to compare through, as in `lenskit compare`: logit (default) or tuned:LENS_DIR; "
        "once for both runs, twice for RUN_A's, then RUN_B's.",
    ),
) -> None:
    """Serve the viewer and the runs' export.json on http://127.0.0.1:8000/ until Ctrl-C.

    Example: lenskit serve runs/paris --port 0 --open
    """
    from ..compare import COMPARE_FILE, is_compare_dir
    from ..server import Server, Site, find_runs, named_by_folder, url_name

    if lens and not compare:
        raise typer.BadParameter("needs --compare (a saved comparison already records its lenses)",
                                 param_hint="'--lens'")
    compares, tmp = {}, None
    scan_here = not compare and not run_dirs
    if compare:
        import tempfile

        from ..compare import lens_specs, run_compare
        from ..export import dumps
        from ..models import progress_logger

        if len(run_dirs or []) != 2:
            raise LenskitError("--compare needs exactly two run folders: lenskit serve RUN_A RUN_B --compare")
        lens = lens_specs(lens)  # spelled right before anything is read
        doc = run_compare(run_dirs[0], run_dirs[1], log=progress_logger(False),
                          warn=lambda m: typer.echo(f"lenskit: warning: {m}", err=True), lenses=lens)
        tmp = tempfile.TemporaryDirectory(prefix="lenskit-compare-")
        name = url_name(f"{Path(run_dirs[0]).resolve().name}-vs-{Path(run_dirs[1]).resolve().name}")
        (Path(tmp.name) / COMPARE_FILE).write_bytes(dumps(doc))
        compares[name] = Path(tmp.name) / COMPARE_FILE
    elif run_dirs:
        compares = named_by_folder([Path(d) / COMPARE_FILE for d in run_dirs if is_compare_dir(d)], "compare")
        run_dirs = [d for d in run_dirs if not is_compare_dir(d)]
    else:  # no folders named: the runs and the comparisons in the current folder and below
        from ..server import scan

        compares = named_by_folder([p for p in scan(Path.cwd(), COMPARE_FILE) if is_compare_dir(p.parent)], "compare")
    if run_dirs or not compares or (scan_here and _has_runs()):
        runs = find_runs(run_dirs or None)
    else:
        runs = {}
    site = Site(runs, compares=compares)
    if get is not None:
        from .options import require_stream

        require_stream("stdout", "--get")
        res = site.get(get)
        if tmp is not None:
            tmp.cleanup()
        if res.status != 200:
            raise LenskitError(f"GET {get}: {res.status} {res.body.decode('utf-8', 'replace').strip()}")
        sys.stdout.buffer.write(res.body)
        sys.stdout.flush()
        return
    server = Server(site, host, port, verbose=verbose)
    if not ipaddress.ip_address(server.server_address[0]).is_loopback:
        typer.echo(f"lenskit: warning: listening on {host}: the served prompts and statistics are visible to anyone "
                   "who can reach this machine", err=True)
    threading.Thread(target=site.warm, name="lenskit-gzip", daemon=True).start()
    typer.echo(f"lenskit: serving {len(site.runs)} run(s): {', '.join(site.runs)}"
               + (f" and {len(compares)} comparison(s): {', '.join(compares)}" if compares else "") + " (Ctrl-C to stop)",
               err=True)
    url = server.url + ("compare.html" if compares and site.runs else "")
    typer.echo(url)
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("lenskit: stopped", err=True)
    finally:
        server.server_close()
        if tmp is not None:
            tmp.cleanup()


def _has_runs() -> bool:
    from ..schema import EXPORT_FILE
    from ..server import scan

    return bool(scan(Path.cwd(), EXPORT_FILE))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
