"""The OpenAPI 3 document of the admin API, written from its table of routes."""

from __future__ import annotations

from typing import Any, Dict, Iterable

from twisted_mqtt import __version__

ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "status": {"type": "integer"}, "message": {"type": "string"},
    "field": {"type": "string", "description": "the parameter or body field at fault"}}}}}


def document(routes: Iterable[Any]) -> Dict[str, Any]:
    """The OpenAPI 3.0 document of ``routes`` (``twisted_mqtt.web.api.Route``)."""
    paths: Dict[str, Dict[str, Any]] = {}
    for route in routes:
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "string"}} for name in route.names]
        parameters += [{"name": name, "in": "query", "required": "required" in description,
                        "description": description, "schema": {"type": kind}}
                       for name, kind, description in route.query]
        responses: Dict[str, Any] = {
            str(route.status): {"description": "JSON", "content": {
                "text/event-stream" if route.handler == "events" else "application/json": {}}},
            "4XX": {"description": "bad input, not signed in, not found",
                    "content": {"application/json": {"schema": ERROR_SCHEMA}}}}
        operation: Dict[str, Any] = {"operationId": route.handler, "summary": route.summary,
                                     "parameters": parameters, "responses": responses}
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": route.body}}}
        if route.public:
            operation["security"] = []
        paths.setdefault("/api/v1/" + route.pattern, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "twisted_mqtt admin API", "version": __version__,
                 "description": "See docs/dashboard.md. Writes from a browser session need "
                                "the X-CSRF-Token header; scripts send X-API-Key."},
        "paths": paths,
        "components": {"securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "session": {"type": "apiKey", "in": "cookie", "name": "twisted_mqtt_session"}}},
        "security": [{"apiKey": []}, {"session": []}],
    }
