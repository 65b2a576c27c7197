"""``GET /``: the playground, a page that streams ``POST /v1/solve`` (plain HTML, JS and CSS).

The page and its two assets are package data (``runtime/server/static``), read once and served
from memory; nothing is built and nothing is fetched from elsewhere.  The routes are public (the
page asks for the key and sends it with each solve) and stay out of the OpenAPI schema.  The page
puts whatever the model writes on screen as text, never as HTML, and its Content-Security-Policy
allows only its own script and style, so hostile model output cannot script it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from runtime.server.errors import NotFound

ASSETS = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return (resources.files("runtime.server") / "static" / name).read_bytes()


@router.get("/")
async def playground() -> Response:
    """The playground page."""
    return Response(_read("playground.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    """The page's script and style sheet (only those: ``name`` is looked up, never joined to a path)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no static file {name!r}; there are {', '.join(sorted(ASSETS))}", code="not_found")
    return Response(_read(name), media_type=media_type, headers=HEADERS)
