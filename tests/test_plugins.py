"""Plugin discovery through entry points, load/disable switches, duplicates, typed options, and
the `dk plugins` commands."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from distkeras_plus import Option, OptionError, RuleChoice
from distkeras_plus.cli import main
from distkeras_plus.plugins import registry


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """Plugins load once per process: a test that installs one reads them again, and its
    plugins leave with it."""
    registry.reload()
    yield
    registry.reload()


BUILT_IN = [
    "adag",
    "adag-adaptive",
    "aeasgd",
    "averaging",
    "downpour",
    "dynsgd",
    "eamsgd",
    "easgd",
    "ensemble",
    "single",
]


def test_built_ins_come_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DK_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("DK_DISABLE_PLUGINS", raising=False)
    installed = registry.load()
    assert set(BUILT_IN) <= set(installed)
    for name in BUILT_IN:
        assert installed[name].distribution == "distkeras-plus-optimizers"
        assert installed[name].plugin == name


def test_load_and_disable_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DK_LOAD_PLUGINS", "adag, easgd")
    assert sorted(registry.load()) == ["adag", "easgd"]
    monkeypatch.delenv("DK_LOAD_PLUGINS")
    monkeypatch.setenv("DK_DISABLE_PLUGINS", "adag")
    assert "adag" not in registry.load() and "downpour" in registry.load()
    with pytest.raises(registry.PluginError, match="unknown optimizer 'adag'"):
        registry.get("adag")


def fake_distribution(root: Path, dist: str, module: str, source: str, entry: str) -> None:
    """A real installed distribution on disk: dist-info metadata plus its module."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[distkeras_plus]\n{entry} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


def test_two_plugins_registering_one_name_is_an_error_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution(
        tmp_path,
        "other-optimizers",
        "other_adag",
        """
        from distkeras_plus import OptimizerSpec, RuleChoice, hookimpl

        @hookimpl
        def dk_optimizers():
            rule = lambda o, n: RuleChoice("add")
            return [OptimizerSpec("adag", "another adag", [], rule, lambda ctx: None)]
        """,
        "other-adag",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(registry.PluginError) as err:
        registry.get("adag")
    message = str(err.value)
    assert "distkeras-plus-optimizers" in message and "other-optimizers" in message
    assert "DK_DISABLE_PLUGINS=" in message and "other-adag" in message
    # Only the optimizer both claim is unusable; the rest of both plugins work.
    assert registry.get("easgd").distribution == "distkeras-plus-optimizers"
    listed = json.loads(CliRunner().invoke(main, ["plugins", "list", "--output-format", "json"]).output)
    assert {"name": "adag", "plugin": None, "broken": message} in listed
    monkeypatch.setenv("DK_DISABLE_PLUGINS", "other-adag")
    assert registry.load()["adag"].distribution == "distkeras-plus-optimizers"


def test_a_broken_plugin_fails_only_what_selects_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_distribution(tmp_path, "broken", "broken_plugin", "raise ImportError('no numpy here')\n", "broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert set(BUILT_IN) <= set(registry.load())
    with pytest.raises(registry.PluginError) as err:
        registry.get("my-optimizer")
    message = str(err.value)
    assert "broken_plugin from broken failed to load: ImportError: no numpy here" in message
    assert "DK_DISABLE_PLUGINS=broken" in message
    runner = CliRunner()
    listed = runner.invoke(main, ["plugins", "list"])
    assert listed.exit_code == 0
    assert "broken: plugin broken: broken_plugin from broken failed to load" in listed.output
    assert "DK_DISABLE_PLUGINS=broken" in listed.output
    assert runner.invoke(main, ["plugins", "info", "adag"]).exit_code == 0
    selected = runner.invoke(main, ["plugins", "info", "my-optimizer"])
    assert selected.exit_code == 2 and "DK_DISABLE_PLUGINS=broken" in selected.output


def test_plugins_load_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = registry.installed()
    assert registry.installed() is first
    fake_distribution(tmp_path, "late", "late_plugin", "raise ImportError('late')\n", "late")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registry.installed() is first and "late" not in first.broken  # not read again
    with pytest.raises(registry.PluginError, match="late"):  # ... until something is missing
        registry.get("late-optimizer")
    assert "late" in registry.installed().broken
    monkeypatch.setenv("DK_DISABLE_PLUGINS", "late")  # a switch that changes is honoured at once
    assert "late" not in registry.installed().broken


def test_options_are_typed_and_validated() -> None:
    spec = registry.get("aeasgd").spec
    opts = spec.parse_options({"window": "8", "rho": 2})
    assert opts == {"window": 8, "rho": 2.0, "learning_rate": 0.1}
    with pytest.raises(OptionError, match="no option windw; its options: window, rho, learning_rate"):
        spec.parse_options({"windw": 3})
    with pytest.raises(OptionError, match="window takes a int"):
        spec.parse_options({"window": 2.5})
    with pytest.raises(OptionError, match="window takes a int"):
        spec.parse_options({"window": "many"})
    with pytest.raises(OptionError, match=">= 1"):
        spec.parse_options({"window": 0})
    with pytest.raises(OptionError, match="64 bits"):
        spec.parse_options({"window": 10**41})
    with pytest.raises(OptionError, match="finite"):
        spec.parse_options({"rho": "nan"})
    # What the options make of the rule's parameters is checked in the type the rule uses.
    with pytest.raises(OptionError, match="float32"):
        spec.rule_for(spec.parse_options({"rho": 1e300}), 2)
    flag = Option("fast", bool, False, "go fast")
    assert flag.parse("yes") is True and flag.parse("off") is False
    with pytest.raises(OptionError):
        flag.parse(1)


def rule(name: str, options: dict[str, object], workers: int) -> RuleChoice | None:
    spec = registry.get(name).spec
    return spec.rule_for(spec.parse_options(options), workers)


def test_rules_come_from_the_options() -> None:
    assert rule("averaging", {}, 4) == RuleChoice("sync", {"workers": 4, "scale": 0.25})
    assert rule("easgd", {}, 3) == RuleChoice("sync", {"workers": 3, "scale": 1.0})
    assert rule("aeasgd", {"rho": 2.0, "learning_rate": 0.2}, 2) == RuleChoice("elastic", {"alpha": 0.4})
    assert rule("ensemble", {}, 2) is None


def test_dk_plugins_list_and_info() -> None:
    runner = CliRunner()
    listed = json.loads(runner.invoke(main, ["plugins", "list", "--output-format", "json"]).output)
    assert {row["name"] for row in listed} >= set(BUILT_IN)
    text = runner.invoke(main, ["plugins", "info", "adag-adaptive"]).output
    assert "Experimental" in text and "gamma" in text and "adaptive" in text
    info = json.loads(runner.invoke(main, ["plugins", "info", "adag", "--output-format", "json"]).output)
    assert info["options"] == [
        {
            "name": "window",
            "type": "int",
            "default": 12,
            "help": "local steps between exchanges with the parameter server",
        }
    ]
    assert info["rule"]["name"] == "add" and "AGN" in info["description"]
    missing = runner.invoke(main, ["plugins", "info", "nope"])
    assert missing.exit_code == 2 and "installed: adag" in missing.output


def test_errors_a_user_cannot_fix_are_internal_and_debug_shows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution(
        tmp_path,
        "buggy-optimizers",
        "buggy",
        """
        from distkeras_plus import OptimizerSpec, RuleChoice, hookimpl

        def optimizer(options):
            raise RuntimeError("a bug in the plugin")

        @hookimpl
        def dk_optimizers():
            rule = lambda o, n: RuleChoice("add")
            spec = OptimizerSpec("buggy", "buggy", [], rule, lambda ctx: None, worker_optimizer=optimizer)
            return [spec]
        """,
        "buggy",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(main, ["plugins", "info", "buggy"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: internal error: RuntimeError: a bug in the plugin (rerun with --debug for the traceback)"
    ]
    for args in (["--debug", "plugins", "info", "buggy"], ["plugins", "info", "buggy", "--debug"]):
        debug = runner.invoke(main, args)
        assert isinstance(debug.exception, RuntimeError) and "a bug in the plugin" in str(debug.exception)
    user = runner.invoke(main, ["plugins", "info", "nope", "--debug"])
    assert isinstance(user.exception, registry.PluginError)  # the traceback of a user error too
