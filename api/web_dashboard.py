"""The dashboard: static pages for people (api/dashboard/), served by the app itself at /dashboard/.

The pages are HTML, CSS and vanilla JavaScript with no build step and nothing fetched from elsewhere;
they read the same /v1 API as any client, with an API key the person types in (kept in the tab's
sessionStorage, sent only as an Authorization header, never in a URL).  The headers below keep the
pages from running or loading anything but their own files, and from being framed.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # a new version of the service serves its new pages at once
}


class DashboardFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


def dashboard_files() -> DashboardFiles:
    return DashboardFiles(directory=DASHBOARD_DIR, html=True)
