"""The edge's documentation on its own listener: ``/openapi.json`` and ``/openapi.yaml`` (the document openapi.py
builds, rendered once at start) and ``/docs``, Swagger UI served from the swagger-ui-py package's files, so the page
works with no network beyond the edge (no CDN). Swagger UI 5 reads OpenAPI 3.1."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from google.protobuf import descriptor_pb2

from meshlet.errors import ConfigError
from meshlet_edge.routes import RouteTable
from meshlet_edge.stages import Handler

PAGES = ("/openapi.json", "/openapi.yaml", "/docs", "/docs/")
ASSETS = ("swagger-ui.css", "index.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <title>{title}</title>
  <link rel="stylesheet" type="text/css" href="/docs/static/swagger-ui.css">
  <link rel="stylesheet" type="text/css" href="/docs/static/index.css">
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js" charset="UTF-8"></script>
  <script>
    window.onload = function () {{
      window.ui = SwaggerUIBundle({{
        url: "/openapi.json",
        dom_id: "#swagger-ui",
        deepLinking: true,
        displayOperationId: true,
        tryItOutEnabled: true,
        presets: [SwaggerUIBundle.presets.apis],
      }});
    }};
  </script>
</body>
</html>
"""


def source_files(descriptor_sets: Sequence[Path]) -> list[descriptor_pb2.FileDescriptorProto]:
    """The files of the configured descriptor sets with their source info (comments), for openapi.comments_of;
    load_pool has already refused a set that does not parse."""
    files: list[descriptor_pb2.FileDescriptorProto] = []
    for path in descriptor_sets:
        files.extend(descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file)
    return files


def refuse_shadowing(routes: RouteTable) -> None:
    """A ConfigError when a google.api.http rule binds a path the documentation takes: the docs would hide it."""
    hidden = [f"GET {page} ({found.route.path})" for page in PAGES if (found := routes.match("GET", page))]
    if hidden:
        fix = "set edge.docs: false, or bind the method elsewhere"
        raise ConfigError("edge.docs", True, f"{', '.join(hidden)} would be hidden by the documentation: {fix}")


def _assets() -> Path:
    return Path(str(resources.files("swagger_ui") / "static"))


class Docs:
    """The three documentation routes over one document rendered once."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.json = json.dumps(document, indent=1)
        self.yaml = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        self.page = PAGE.format(title=document["info"]["title"].replace("<", "&lt;"))
        self.assets = _assets()

    def add_to(self, app: web.Application, wrap: Callable[[Handler], Handler]) -> None:
        """Adds the routes, each handler behind `wrap` (the edge's stages); call before the edge's catch-all route,
        which they take precedence over."""
        json_page, yaml_page, page, page_slash = PAGES
        app.router.add_get(json_page, wrap(self._json))
        app.router.add_get(yaml_page, wrap(self._yaml))
        app.router.add_get(page, wrap(self._page))
        app.router.add_get(page_slash, wrap(self._page))
        app.router.add_get("/docs/static/{file}", wrap(self._asset))

    async def _json(self, request: web.Request) -> web.Response:
        return web.Response(text=self.json, content_type="application/json")

    async def _yaml(self, request: web.Request) -> web.Response:
        return web.Response(text=self.yaml, content_type="application/yaml")

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page, content_type="text/html")

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        if name not in ASSETS:  # only the files the page uses, never a path a client makes up
            raise web.HTTPNotFound(text=f"no asset {name!r}: the page uses {', '.join(ASSETS)}\n")
        return web.FileResponse(self.assets / name, headers={"Cache-Control": "public, max-age=86400"})
