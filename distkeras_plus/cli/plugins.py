"""`dk plugins`: the installed distributed optimizers, and the plugins that failed to load."""

from __future__ import annotations

import json
from typing import Any

import click

from distkeras_plus.cli.common import OUTPUT_FORMAT, DkGroup


@click.group(cls=DkGroup)
def plugins() -> None:
    """Installed distributed optimizers."""


@plugins.command("list")
@OUTPUT_FORMAT
def plugins_list(output_format: str) -> None:
    """List every optimizer and the distribution it comes from, and every broken plugin."""
    from distkeras_plus.plugins import registry

    found = registry.installed()
    rows: list[dict[str, Any]] = [
        {
            "name": n,
            "summary": r.spec.summary,
            "plugin": r.plugin,
            "distribution": r.distribution,
            "version": r.version,
            "broken": None,
        }
        for n, r in sorted(found.optimizers.items())
    ]
    broken = [{"name": None, "plugin": p, "broken": e} for p, e in sorted(found.broken.items())]
    broken += [{"name": n, "plugin": None, "broken": e} for n, e in sorted(found.conflicts.items())]
    if output_format == "json":
        click.echo(json.dumps(rows + broken))
        return
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['summary']}  [{r['distribution']} {r['version']}]")
    for b in broken:
        what = f"plugin {b['plugin']}" if b["plugin"] else f"optimizer {b['name']}"
        click.echo(f"broken: {what}: {b['broken']}")
    if found.broken:
        click.echo(f"(set DK_DISABLE_PLUGINS={','.join(sorted(found.broken))} to skip the broken plugins)")


@plugins.command("info")
@click.argument("name")
@OUTPUT_FORMAT
def plugins_info(name: str, output_format: str) -> None:
    """Show an optimizer's options, defaults, server rule and origin."""
    from distkeras_plus.plugins import registry

    r = registry.get(name)
    spec = r.spec
    defaults = spec.parse_options({})
    rule = spec.rule_for(defaults, 2)
    info = {
        "name": spec.name,
        "summary": spec.summary,
        "description": spec.description,
        "options": [
            {"name": o.name, "type": o.type.__name__, "default": o.default, "help": o.help}
            for o in spec.options
        ],
        "rule": None if rule is None else {"name": rule.name, "params_with_2_workers": dict(rule.params)},
        "synchronous": spec.synchronous,
        "worker_optimizer": spec.worker_optimizer_for(defaults),
        "plugin": r.plugin,
        "distribution": r.distribution,
        "version": r.version,
    }
    if output_format == "json":
        click.echo(json.dumps(info))
        return
    click.echo(f"{spec.name}: {spec.summary}")
    if spec.description:
        click.echo(f"  {spec.description}")
    click.echo(f"  from {r.distribution} {r.version} (plugin {r.plugin})")
    click.echo(
        f"  server rule: {'none' if rule is None else rule.name} {dict(rule.params) if rule else ''}".rstrip()
    )
    click.echo(f"  runs {'synchronously (a barrier stage)' if spec.synchronous else 'asynchronously'}")
    click.echo(f"  default worker optimizer: {json.dumps(info['worker_optimizer'])}")
    click.echo("  options:" if spec.options else "  options: none")
    for o in spec.options:
        click.echo(f"    {o.name} ({o.type.__name__}, default {o.default!r}): {o.help}")
