"""`/docs.json`: BentoML's spec for the APIs, completed with everything else we serve.

BentoML documents its own APIs and probes; it knows nothing of the mounted GET, admin and
job routes, of raw-body uploads or of our error shape, and names the service
"piston-inspector", version "None", with its default description. This fills those in.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from pydantic import BaseModel
from starlette.routing import Route

from service.routes.auth import route_shapes
from service.schemas import ErrorAnswer, ModelAnswer

REF = "#/components/schemas/{model}"
DESCRIPTION = """Classifies photos of manufactured parts (first customer: air-conditioner
pistons, classes `defect_1`, `defect_2`, `normal`) with the registry's production bundle.
Every answer names the bundle version that made it.

```bash
curl -F image=@part.jpg http://127.0.0.1:3000/classify
curl --data-binary @part.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:3000/classify
```

```python
import bentoml, pathlib
with bentoml.SyncHTTPClient("http://127.0.0.1:3000") as client:
    client.classify(image=pathlib.Path("part.jpg"))
```

Refusals are JSON `{"error", "kind"}`: 400 empty or malformed, 413 too large (bytes,
pixels or images), 415 not a supported image, 422 truncated, 503 with `Retry-After` when
not ready or overloaded. Admin and job routes need `Authorization: Bearer <token>`
(PISTON_ADMIN_TOKEN); without a configured token they answer 403."""
# The Swagger page on BentoML's bundled assets, without its tracking tag and with the title
# visible (BentoML's stylesheet hides it).
INDEX_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8"><title>piston-inspector</title>
<link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
<style>.topbar { display: none; }</style></head>
<body><div id="swagger-ui"></div>
<script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
<script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
<script src="./static_content/swagger-initializer.js" charset="UTF-8"></script>
</body></html>
"""
API_ERRORS = {400: "empty or malformed request", 413: "over the byte, pixel or image limit",
              415: "not a supported image", 422: "truncated or corrupt image",
              503: "not ready, or overloaded: retry after `Retry-After` seconds"}
ADMIN_ERRORS = {401: "missing or wrong token", 403: "admin is disabled (no token configured)",
                404: "unknown bundle or job", 409: "refused by the registry",
                422: "invalid body", 503: "store or job queue unreachable"}


def version(bento: Any) -> str:
    """The bento's version when served from one, else the installed package's."""
    if bento is not None:
        return str(bento.tag.version)
    try:
        return importlib.metadata.version("piston-inspector")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def service_spec(service: Any, admin: list[Route]) -> dict[str, Any]:
    """The full spec as a JSON-ready dict."""
    spec: dict[str, Any] = service.openapi_spec.asdict()
    spec["info"] = {"title": "piston-inspector", "version": version(service.bento),
                    "description": DESCRIPTION}
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    spec["components"]["securitySchemes"] = {"adminToken": {"type": "http", "scheme": "bearer"}}
    paths = spec["paths"]
    raw = {"schema": {"type": "string", "format": "binary"}}
    paths["/classify"]["post"]["requestBody"]["content"]["image/*"] = raw
    for path in ("/classify", "/classify_batch"):
        paths[path]["post"]["responses"] = {
            **_ok(paths[path]["post"]["responses"]), **_errors(API_ERRORS, schemas)}
    paths["/model"] = {"get": {"tags": ["Service APIs"], "description": "What this worker"
                               " serves: version, classes, threshold, metrics, gates, batching.",
                               "responses": {"200": _json(ModelAnswer, schemas)}}}
    for route in admin:
        paths.setdefault(route.path, {}).update(_admin_operation(route, schemas))
    return spec


def _admin_operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    body, answer = route_shapes(route.endpoint)
    operation: dict[str, Any] = {
        "tags": ["Admin and jobs"], "security": [{"adminToken": []}],
        "description": (route.endpoint.__doc__ or "").strip(),
        "responses": {"200": _json(answer, schemas), **_errors(ADMIN_ERRORS, schemas)},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(body, schemas)}}}
    if "{job_id}" in route.path:
        operation["parameters"] = [{"name": "job_id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}]
    return {method.lower(): operation for method in route.methods or () if method != "HEAD"}


def _ok(responses: dict[Any, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in responses.items() if str(k) == "200"}


def _errors(table: dict[int, str], schemas: dict[str, Any]) -> dict[str, Any]:
    return {str(status): {"description": text, "content": {
        "application/json": {"schema": _ref(ErrorAnswer, schemas)}}}
        for status, text in table.items()}


def _json(model: type[BaseModel] | None, schemas: dict[str, Any]) -> dict[str, Any]:
    schema = _ref(model, schemas) if model is not None else {"type": "object"}
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """Register `model` (and the models it uses) under components; a $ref to it."""
    schema = model.model_json_schema(ref_template=REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}
