"""The web page at ``/`` and its script and style under ``/static/``: files of the package
(``zoo/serve/static``), read once, served with a content security policy that allows only
the page's own files (and the images a visitor drops, as blob or data URLs)."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from zoo.serve.protocol import ProtocolError

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "content-security-policy":
                    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                    "frame-ancestors 'none'"}


class WebPage:
    """The page's files in memory, and the two handlers that serve them."""

    def __init__(self) -> None:
        self.files = {name: resources.files("zoo.serve").joinpath("static", name).read_bytes()
                      for name in STATIC}

    async def page(self, request: Request) -> Response:
        return Response(self.files["index.html"], 200,
                        {"content-type": STATIC["index.html"], **SECURITY_HEADERS})

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["file"]
        if name not in self.files:
            raise ProtocolError(f"no static file {name!r}; accepted: "
                                f"{', '.join(self.files)}", 404)
        return Response(self.files[name], 200, {"content-type": STATIC[name],
                                                "cache-control": "no-cache",
                                                **SECURITY_HEADERS})


__all__ = ["WebPage"]
