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
        help="Run folders holding export.json. None: those in the current folder and up to 2 levels below it.",
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
) -> None:
    """Serve the viewer and the runs' export.json on http://127.0.0.1:8000/ until Ctrl-C.

    Example: lenskit serve runs/paris --port 0 --open
    """
    from ..server import Server, Site, find_runs

    site = Site(find_runs(run_dirs or None))
    if get is not None:
        res = site.get(get)
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
    typer.echo(f"lenskit: serving {len(site.runs)} run(s): {', '.join(site.runs)} (Ctrl-C to stop)", err=True)
    typer.echo(server.url)
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("lenskit: stopped", err=True)
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
