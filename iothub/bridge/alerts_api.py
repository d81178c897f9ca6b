"""REST API for alert rules (``/api/v1/rules``), their history (``/api/v1/alerts``) and webhook
endpoints and deliveries (``/api/v1/webhooks``). Reading rules and alerts takes scope read;
everything about webhooks (their URLs may carry secrets of their own) takes admin."""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import Field, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from iothub.bridge.admin import _Body, body, read_limited
from iothub.bridge.auth import requires
from iothub.bridge.errors import BadRequest
from iothub.bridge.params import check_known, parse_int
from iothub.bridge.rest import hub_of
from iothub.bridge.targets import check_url
from iothub.hub.registry import Scope
from iothub.hub.rulebook import parse_rule, rule_view

MAX_LIMIT = 1000


class WebhookCreate(_Body):
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    events: list[str] = Field(min_length=1, max_length=16)
    description: Annotated[str, StringConstraints(max_length=256)] = ""


class WebhookPatch(_Body):
    enabled: bool


def _limit(request: Request, default: int = 100) -> int:
    q = request.query_params
    return parse_int("limit", q["limit"], 1, MAX_LIMIT) if "limit" in q else default


async def list_rules(request: Request) -> JSONResponse:
    rules, bad = await asyncio.to_thread(hub_of(request).rulebook.catalogue)
    views = [rule_view(rule, source) for rule, source in rules]
    return JSONResponse({"rules": views, "invalid": [b.view() for b in bad]})


async def add_rule(request: Request) -> JSONResponse:
    hub = hub_of(request)
    rule = parse_rule(await read_limited(request, hub.settings.http.max_body_bytes) or b"{}")
    await asyncio.to_thread(hub.rulebook.add, rule)
    await hub.alerts.reload()
    return JSONResponse(rule_view(rule, "api"), status_code=201)


async def remove_rule(request: Request) -> Response:
    hub = hub_of(request)
    await asyncio.to_thread(hub.rulebook.remove, request.path_params["name"])
    await hub.alerts.reload()
    return Response(status_code=204)


async def list_alerts(request: Request) -> JSONResponse:
    """The alert history, newest first: ``?rule=``, ``?device=``, ``?limit=``."""
    q = request.query_params
    check_known(q.keys(), ("rule", "device", "limit"))
    history = await asyncio.to_thread(hub_of(request).rulebook.history, q.get("rule"), q.get("device"), _limit(request))
    return JSONResponse({"alerts": history})


async def list_webhooks(request: Request) -> JSONResponse:
    return JSONResponse({"endpoints": await asyncio.to_thread(hub_of(request).webhooks.endpoints)})


async def add_webhook(request: Request) -> JSONResponse:
    spec = await body(request, WebhookCreate)
    hub = hub_of(request)
    try:
        check_url(spec.url, hub.settings.webhooks.allow_private_targets)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    endpoint, secret = await asyncio.to_thread(hub.webhooks.add, spec.url, spec.events, spec.description)
    return JSONResponse({**endpoint, "secret": secret}, status_code=201)


async def get_webhook(request: Request) -> JSONResponse:
    return JSONResponse(await asyncio.to_thread(hub_of(request).webhooks.get, request.path_params["endpoint_id"]))


async def patch_webhook(request: Request) -> JSONResponse:
    change = await body(request, WebhookPatch)
    hub = hub_of(request)
    endpoint = await asyncio.to_thread(hub.webhooks.set_enabled, request.path_params["endpoint_id"], change.enabled)
    hub.outbox_nudge.set()
    return JSONResponse(endpoint)


async def remove_webhook(request: Request) -> Response:
    await asyncio.to_thread(hub_of(request).webhooks.remove, request.path_params["endpoint_id"])
    return Response(status_code=204)


async def rotate_webhook_secret(request: Request) -> JSONResponse:
    hub = hub_of(request)
    overlap = hub.settings.webhooks.secret_overlap_s
    endpoint, secret = await asyncio.to_thread(hub.webhooks.rotate_secret, request.path_params["endpoint_id"], overlap)
    return JSONResponse({**endpoint, "secret": secret})


async def list_deliveries(request: Request) -> JSONResponse:
    """Deliveries, newest first: ``?endpoint=``, ``?state=`` (pending, sending, delivered, dead), ``?limit=``."""
    q = request.query_params
    check_known(q.keys(), ("endpoint", "state", "limit"))
    state = q.get("state")
    if state not in (None, "pending", "sending", "delivered", "dead"):
        raise BadRequest(f"parameter 'state': {state!r} is not one of pending, sending, delivered, dead")
    hub = hub_of(request)
    found = await asyncio.to_thread(hub.webhooks.deliveries, q.get("endpoint"), state, _limit(request))
    return JSONResponse({"deliveries": found})


async def get_delivery(request: Request) -> JSONResponse:
    return JSONResponse(await asyncio.to_thread(hub_of(request).webhooks.delivery, request.path_params["delivery_id"]))


async def redeliver(request: Request) -> JSONResponse:
    hub = hub_of(request)
    delivery = await asyncio.to_thread(hub.webhooks.redeliver, request.path_params["delivery_id"])
    hub.outbox_nudge.set()
    return JSONResponse(delivery)


read, admin = requires(Scope.READ), requires(Scope.ADMIN)
routes = [
    Route("/api/v1/rules", read(list_rules), methods=["GET"]),
    Route("/api/v1/rules", admin(add_rule), methods=["POST"]),
    Route("/api/v1/rules/{name}", admin(remove_rule), methods=["DELETE"]),
    Route("/api/v1/alerts", read(list_alerts), methods=["GET"]),
    Route("/api/v1/webhooks", admin(list_webhooks), methods=["GET"]),
    Route("/api/v1/webhooks", admin(add_webhook), methods=["POST"]),
    Route("/api/v1/webhooks/deliveries", admin(list_deliveries), methods=["GET"]),
    Route("/api/v1/webhooks/deliveries/{delivery_id:int}", admin(get_delivery), methods=["GET"]),
    Route("/api/v1/webhooks/deliveries/{delivery_id:int}/redeliver", admin(redeliver), methods=["POST"]),
    Route("/api/v1/webhooks/{endpoint_id}", admin(get_webhook), methods=["GET"]),
    Route("/api/v1/webhooks/{endpoint_id}", admin(patch_webhook), methods=["PATCH"]),
    Route("/api/v1/webhooks/{endpoint_id}", admin(remove_webhook), methods=["DELETE"]),
    Route("/api/v1/webhooks/{endpoint_id}/secret", admin(rotate_webhook_secret), methods=["POST"]),
]
