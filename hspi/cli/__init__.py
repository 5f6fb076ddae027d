"""The `hspi` command line: thin commands that parse, call the library and render with Rich.

One module per command group registers its commands on `app` (`hspi.cli.app`).  Every `HspiError`
(a user's mistake or a bad file) ends as one line on stderr and a non-zero exit code; only bugs
show a traceback.
"""

from __future__ import annotations

import sys

import typer

from hspi.cli import audit, dataset, demo, model, pipeline, service, target  # noqa: F401  (they register commands)
from hspi.cli.app import app
from hspi.cli.border import border_app
from hspi.cli.fleet import fleet_app
from hspi.errors import HspiError

app.add_typer(border_app, name="border")
app.add_typer(fleet_app, name="fleet")

__all__ = ["app", "main"]


def main() -> None:
    try:
        app(standalone_mode=False)
    except HspiError as exc:
        print(f"error: {exc}", file=sys.stderr)  # one plain line: no wrapping, no markup
        sys.exit(exc.exit_code)
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # click's usage errors (typer vendors click) carry their own message and exit code
        code = getattr(exc, "exit_code", None)
        show = getattr(exc, "show", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise
