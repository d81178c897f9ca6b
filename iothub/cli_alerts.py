"""``iothub rules ...`` and ``iothub webhooks ...``: alert rules and webhook endpoints on a hub's
data dir (a running hub picks changes up within a second)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from iothub.bridge.targets import check_url
from iothub.cli_common import data_options, print_data, settings_of
from iothub.hub.outbox import EVENT_TYPES
from iothub.hub.rulebook import Rulebook, parse_rule, rule_view
from iothub.hub.settings import Settings
from iothub.hub.webhook_admin import WebhookAdmin


def _store(settings: Settings, create: bool) -> Path:
    """The data dir's ``iothub.db``; only verbs that add (``create``) may start a new one."""
    path = settings.data_dir / "iothub.db"
    if not create and not path.is_file():
        default = Settings.model_fields["data_dir"].default
        raise click.ClickException(f"no hub data in {settings.data_dir} (--data-dir; the default is ./{default})")
    return path


@click.group()
def rules() -> None:
    """Alert rules: a metric against a threshold or range, or a device offline too long.

    Rules of the settings file ([[rules]] in iothub.toml) are listed too but changed only there.
    """


@rules.command("add")
@click.argument("name")
@click.option("--metric", help="The metric a metric rule watches.")
@click.option("--op", type=click.Choice([">", "<", ">=", "<=", "==", "outside"]), help="How it is compared.")
@click.option("--threshold", type=float, help="The value compared with (all ops but outside).")
@click.option("--range", "range_", type=float, nargs=2, help="LOW HIGH for op outside.")
@click.option("--clear", type=float, help="The value that resolves a firing alert (hysteresis) [the threshold].")
@click.option("--for", "for_s", type=float, default=0.0, help="Seconds the condition must hold before firing [0].")
@click.option("--offline-for", type=float, help="A presence rule: fires when a device is offline this many seconds.")
@click.option("--device", "devices", multiple=True, help="Only this device; repeat for more [all].")
@click.option("--label", "labels", multiple=True, help="Only devices with this key=value label; repeat for more.")
@data_options
def rules_add(
    name: str, metric: str | None, op: str | None, threshold: float | None, range_: tuple[float, float] | None,
    clear: float | None, for_s: float, offline_for: float | None, devices: tuple[str, ...], labels: tuple[str, ...],
    config_file: Path | None, data_dir: Path | None,
) -> None:  # fmt: skip
    """Add a rule: --metric with --op and --threshold (or --range), or --offline-for."""
    select: dict[str, Any] = {"devices": list(devices), "labels": {}}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep:
            raise click.BadParameter(f"{label!r} is not key=value", param_hint="--label")
        select["labels"][key] = value
    spec: dict[str, Any]
    if offline_for is not None:
        if metric is not None or op is not None:
            raise click.UsageError("--offline-for makes a presence rule: leave out --metric and --op")
        spec = {"kind": "offline", "name": name, "offline_for_s": offline_for, "select": select}
    else:
        if metric is None or op is None:
            raise click.UsageError("a rule needs --metric and --op (or --offline-for)")
        spec = {"kind": "metric", "name": name, "metric": metric, "op": op, "for_s": for_s, "select": select}
        spec |= {k: v for k, v in (("threshold", threshold), ("range", range_), ("clear", clear)) if v is not None}
    rule = parse_rule(spec)
    settings = settings_of(config_file, data_dir)
    book = Rulebook(_store(settings, create=True), settings.rules)
    book.add(rule)
    book.close()
    click.echo(f"rule {name} added")


@rules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_options
def rules_list(as_json: bool, config_file: Path | None, data_dir: Path | None) -> None:
    """List the rules (from the settings file and added here or over REST)."""
    settings = settings_of(config_file, data_dir)
    path = settings.data_dir / "iothub.db"
    if path.is_file():
        found, bad = Rulebook(path, settings.rules).catalogue()
    else:
        found, bad = [(r, "settings") for r in settings.rules], []
    views = [rule_view(rule, source) for rule, source in found] + [b.view() for b in bad]
    lines = [f"{'NAME':20} {'SOURCE':9} RULE"] + [f"{v['name']:20} {v['source']:9} {_describe(v)}" for v in views]
    print_data(views, as_json, "\n".join(lines))


def _describe(view: dict[str, Any]) -> str:
    if "invalid" in view:
        return f"INVALID, skipped: {view['invalid']} (remove it: iothub rules remove {view['name']})"
    if view["kind"] == "offline":
        text = f"offline for {view['offline_for_s']:g} s"
    else:
        target = f"{view['range']}" if view["op"] == "outside" else f"{view['threshold']:g}"
        text = f"{view['metric']} {view['op']} {target}"
        text += f" (clear {view['clear']:g})" if view["clear"] is not None else ""
        text += f" for {view['for_s']:g} s" if view["for_s"] else ""
    select = view["select"]
    if select["devices"]:
        text += " devices=" + ",".join(select["devices"])
    text += "".join(f" {k}={v}" for k, v in select["labels"].items())
    return text


@rules.command("remove")
@click.argument("name")
@data_options
def rules_remove(name: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Remove a rule added here or over REST."""
    settings = settings_of(config_file, data_dir)
    Rulebook(_store(settings, create=False), settings.rules).remove(name)
    click.echo(f"rule {name} removed")


@click.group()
def webhooks() -> None:
    """Webhook endpoints: signed POSTs of alerts and presence changes (Standard Webhooks)."""


def _admin(config_file: Path | None, data_dir: Path | None, create: bool = False) -> tuple[WebhookAdmin, Settings]:
    settings = settings_of(config_file, data_dir)
    return WebhookAdmin(_store(settings, create)), settings


@webhooks.command("add")
@click.argument("url")
@click.option(
    "--events", "events", multiple=True, required=True,
    help=f"Event types, comma-separated or repeated: {', '.join(EVENT_TYPES)}.",
)  # fmt: skip
@click.option("--description", default="", help="What the endpoint is for.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_options
def webhooks_add(
    url: str, events: tuple[str, ...], description: str, as_json: bool, config_file: Path | None,
    data_dir: Path | None,
) -> None:  # fmt: skip
    """Add an endpoint and print its signing secret (whsec_..., shown this once)."""
    admin, settings = _admin(config_file, data_dir, create=True)
    try:
        check_url(url, settings.webhooks.allow_private_targets)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    chosen = [e.strip() for given in events for e in given.split(",") if e.strip()]
    endpoint, secret = admin.add(url, chosen, description)
    text = f"endpoint {endpoint['id']} added for {', '.join(endpoint['events'])}\nsecret: {secret}\n(shown once)"
    print_data({**endpoint, "secret": secret}, as_json, text)


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_options
def webhooks_list(as_json: bool, config_file: Path | None, data_dir: Path | None) -> None:
    """List endpoints (never their secrets)."""
    found = _admin(config_file, data_dir)[0].endpoints()
    lines = [f"{'ID':20} {'ENABLED':8} {'EVENTS':50} URL"] + [
        f"{e['id']:20} {'yes' if e['enabled'] else 'no':8} {','.join(e['events']):50} {e['url']}" for e in found
    ]
    print_data(found, as_json, "\n".join(lines))


@webhooks.command("disable")
@click.argument("endpoint_id")
@data_options
def webhooks_disable(endpoint_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Stop sending to an endpoint.

    Deliveries already queued for it wait and go out on enable; events that happen while it is
    disabled are not queued for it at all (it never gets them).
    """
    _admin(config_file, data_dir)[0].set_enabled(endpoint_id, False)
    click.echo(f"endpoint {endpoint_id} disabled")


@webhooks.command("enable")
@click.argument("endpoint_id")
@data_options
def webhooks_enable(endpoint_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Send to an endpoint again (also one disabled by a 410), starting with what was queued before it was disabled."""
    _admin(config_file, data_dir)[0].set_enabled(endpoint_id, True)
    click.echo(f"endpoint {endpoint_id} enabled")


@webhooks.command("remove")
@click.argument("endpoint_id")
@data_options
def webhooks_remove(endpoint_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Remove an endpoint with its deliveries."""
    _admin(config_file, data_dir)[0].remove(endpoint_id)
    click.echo(f"endpoint {endpoint_id} removed")


@webhooks.command("rotate-secret")
@click.argument("endpoint_id")
@data_options
def webhooks_rotate(endpoint_id: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Give an endpoint a new secret and print it; the old one still signs for webhooks.secret_overlap_s."""
    admin, settings = _admin(config_file, data_dir)
    endpoint, secret = admin.rotate_secret(endpoint_id, settings.webhooks.secret_overlap_s)
    click.echo(
        f"new secret for {endpoint_id}: {secret}\n"
        f"(the previous one also signs until {endpoint['previous_secret_until']})"
    )


@webhooks.command("deliveries")
@click.option("--endpoint", "endpoint_id", help="Only this endpoint's.")
@click.option("--state", type=click.Choice(["pending", "sending", "delivered", "dead"]))
@click.option("--id", "delivery_id", type=int, help="One delivery with its attempts (status, latency, response).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@data_options
def webhooks_deliveries(
    endpoint_id: str | None, state: str | None, delivery_id: int | None, limit: int, as_json: bool,
    config_file: Path | None, data_dir: Path | None,
) -> None:  # fmt: skip
    """List deliveries, newest first, or show one with its attempt log (--id)."""
    admin = _admin(config_file, data_dir)[0]
    if delivery_id is not None:
        one = admin.delivery(delivery_id)
        print_data(one, as_json, _delivery_text(one))
        return
    found = admin.deliveries(endpoint_id, state, limit)
    lines = [f"{'ID':8} {'ENDPOINT':20} {'TYPE':15} {'STATE':10} {'ATTEMPTS':8} MSG"] + [
        f"{d['id']:<8} {d['endpoint_id']:20} {d['type']:15} {d['state']:10} {d['attempts']:<8} {d['msg_id']}"
        for d in found
    ]
    print_data(found, as_json, "\n".join(lines))


def _delivery_text(d: dict[str, Any]) -> str:
    lines = [
        f"delivery {d['id']} ({d['msg_id']}): {d['type']} to {d['endpoint_id']}, {d['state']}, "
        f"{d['attempts']} attempt{'' if d['attempts'] == 1 else 's'}",
        f"created {d['created']}, updated {d['updated']}"
        + (f", next attempt {d['next_attempt']}" if d["next_attempt"] else ""),
        f"body: {json.dumps(d['body'], separators=(',', ':'))}",
    ]
    if d["attempts_log"]:
        lines.append(f"{'ATTEMPT':8} {'TIME':25} {'STATUS':7} {'LATENCY':>10} {'OUTCOME':10} RESPONSE")
    for a in d["attempts_log"]:
        status = "-" if a["status"] is None else str(a["status"])
        response = " ".join(a["response"].split())[:80]
        lines.append(
            f"{a['attempt']:<8} {a['ts']:25} {status:7} {a['latency_ms']:>7.1f} ms {a['outcome']:10} {response}"
        )
    return "\n".join(lines)


@webhooks.command("redeliver")
@click.argument("delivery_id", type=int)
@data_options
def webhooks_redeliver(delivery_id: int, config_file: Path | None, data_dir: Path | None) -> None:
    """Send a delivery again (a dead one gets a fresh retry schedule; its webhook-id stays)."""
    delivery = _admin(config_file, data_dir)[0].redeliver(delivery_id)
    click.echo(f"delivery {delivery_id} ({delivery['msg_id']}) is pending again")
