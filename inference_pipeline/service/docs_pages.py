"""The API's documentation pages, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, with every
asset they load served by this service.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and a favicon from FastAPI's site):
on a machine without internet, the usual case inside a cluster or on an air-gapped box, they
are blank. The assets here come from the ``fastapi-offline`` package (Swagger UI 5, which
renders OpenAPI 3.1 as FastAPI writes it; ReDoc's standalone bundle), so the pages reference no
host but this one.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs-assets"
# The pages' assets, as shipped in the package (a folder of plain files).
_ASSETS = files("fastapi_offline") / "static"


def serve_docs_offline(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their assets under ``/docs-assets`` to ``app``, which must
    be built with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages off)."""
    assert app.openapi_url is not None, "documentation pages need the OpenAPI document"
    openapi_url = app.openapi_url
    app.mount(ASSETS_PATH, StaticFiles(directory=str(_ASSETS)), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        assets = _assets_url(request)
        return get_swagger_ui_html(
            openapi_url=_root(request) + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        assets = _assets_url(request)
        return get_redoc_html(
            openapi_url=_root(request) + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )


def _root(request: Request) -> str:
    """The path prefix a proxy serves this app under (``--root-path``), so the pages' links
    work behind it."""
    return str(request.scope.get("root_path", ""))


def _assets_url(request: Request) -> str:
    return _root(request) + ASSETS_PATH
