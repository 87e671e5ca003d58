"""The console's static files: ``/console`` (the page) and ``/console/static/...`` (its assets).

The page holds no data and no secret, so it is served without a key; everything it shows comes
from the admin API, called by the page's scripts with the admin key the operator types in. The
headers keep it that way: scripts and styles only from this origin (no inline code a reflected
string could become), no framing (clickjacking of deploy buttons), no sniffing, no referrer.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from server.errors import NotFoundError

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".md": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # vendor VERSION files
}
CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob:",  # evaluation charts arrive as blobs fetched with the key
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",  # forms are handled by scripts; nothing is ever posted by the browser
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # Revalidate every time: an upgraded server never runs next to a stale script.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _file(path: Path) -> FileResponse:
    media_type = CONTENT_TYPES.get(path.suffix)
    if media_type is None or not path.is_file():
        raise NotFoundError("no such console file")
    return FileResponse(path, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/console")
def console_page() -> FileResponse:
    return _file(STATIC / "index.html")


@router.get("/console/")
def console_slash() -> RedirectResponse:
    return RedirectResponse("/console", status_code=308)


@router.get("/console/static/{name:path}")
def console_asset(name: str) -> FileResponse:
    path = (STATIC / name).resolve()
    if not path.is_relative_to(STATIC):  # '..' in the path: outside the static folder
        raise NotFoundError("no such console file")
    return _file(path)
