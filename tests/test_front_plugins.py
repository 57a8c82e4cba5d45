"""Plugin discovery: built-ins through entry points, in-process registration, failures, kill switch."""

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest
from torch import nn

from maml_ext import plugins
from maml_ext.models.mlp import MLP
from maml_ext.tasks.sinusoid import Sinusoid


def test_builtins_come_from_our_own_entry_points():
    assert "mlp" in plugins.models.names() and "sinusoid" in plugins.tasks.names()
    assert isinstance(plugins.build_model("mlp", in_features=1, out_features=1), MLP)
    assert isinstance(plugins.build_task("sinusoid"), Sinusoid)


def test_import_maml_ext_loads_no_plugin_module():
    code = "import sys, maml_ext; print(sorted(m for m in sys.modules if m.startswith('maml_ext.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for lazy in ("maml_ext.models", "maml_ext.tasks", "maml_ext.plugins", "maml_ext.algorithms"):
        assert f"'{lazy}" not in out


@pytest.fixture
def registry():
    # A private registry so tests never touch the global one.
    return plugins.Registry("model", "maml_ext.models")


def test_in_process_registration(registry):
    registry.register("tiny", lambda in_features, out_features: nn.Linear(in_features, out_features))
    assert "tiny" in registry.names()
    assert isinstance(registry.build("tiny", in_features=2, out_features=3), nn.Linear)
    with pytest.raises(plugins.PluginError, match="already registered"):
        registry.register("tiny", nn.Linear)


def test_global_register_model_is_used_by_name():
    plugins.register_model("test_front_linear", lambda in_features, out_features: nn.Linear(in_features, out_features))
    try:
        assert isinstance(plugins.build_model("test_front_linear", in_features=1, out_features=1), nn.Linear)
    finally:
        plugins.models.unregister("test_front_linear")


def test_unknown_name_lists_available(registry):
    registry.register("tiny", nn.Linear)
    with pytest.raises(plugins.PluginError, match=r"unknown model 'nope'; available: .*mlp.*tiny"):
        registry.factory("nope")


def test_bad_options_name_the_plugin(registry):
    registry.register("tiny", lambda in_features, out_features: nn.Linear(in_features, out_features))
    with pytest.raises(plugins.PluginError, match="model 'tiny' rejected its options"):
        registry.build("tiny", in_features=1, out_features=1, depth=3)


@pytest.fixture
def third_party(monkeypatch):
    """Pretend a third-party distribution declares a broken and a working model plugin."""
    fake = [
        EntryPoint("broken", "maml_ext_no_such_module:build", "maml_ext.models"),
        EntryPoint("linear", "torch.nn:Linear", "maml_ext.models"),
    ]
    real = plugins.entry_points

    def entry_points(group):
        return [*real(group=group), *(ep for ep in fake if ep.group == group)]

    monkeypatch.setattr(plugins, "entry_points", entry_points)


def test_broken_plugin_error_names_it_and_the_switch(third_party, registry):
    with pytest.raises(plugins.PluginError, match="'broken'.*maml_ext_no_such_module.*MAML_EXT_PLUGIN_AUTOLOAD=0"):
        registry.factory("broken")
    # Other plugins are unaffected by the broken one.
    assert registry.build("linear", in_features=2, out_features=1).in_features == 2


def test_builtin_plugin_missing_its_optional_dependency_names_the_install(monkeypatch):
    # No mujoco: the locomotion families' module refuses to import with the install command, and
    # the registry does not suggest the third-party switch, which cannot help a built-in plugin.
    for module in ("maml_ext.rl.envs.locomotion", "maml_ext.rl.envs.mujoco_sim"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "mujoco", None)
    registry = plugins.Registry("task", "maml_ext.tasks")
    with pytest.raises(plugins.PluginError, match=r"'halfcheetah_vel'.*pip install 'gymnasium\[mujoco\]==1.4.0'") as info:
        registry.factory("halfcheetah_vel")
    assert plugins.AUTOLOAD_ENV not in str(info.value)


def test_kill_switch_hides_third_party_but_keeps_builtins(third_party, registry, monkeypatch):
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "0")
    assert "broken" not in registry.names() and "linear" not in registry.names()
    assert "mlp" in registry.names()
    with pytest.raises(plugins.PluginError, match="unknown model 'linear'"):
        registry.factory("linear")


def _installed_first(monkeypatch, fake):
    """Fake third-party entry points found before maml_ext's own (as pip's install order can make them)."""
    real = plugins.entry_points
    monkeypatch.setattr(plugins, "entry_points",
                        lambda group: [*(ep for ep in fake if ep.group == group), *real(group=group)])


def test_a_third_party_plugin_never_replaces_a_builtin(monkeypatch, registry):
    _installed_first(monkeypatch, [EntryPoint("mlp", "maml_ext_no_such_module:build", "maml_ext.models")])
    assert registry.names().count("mlp") == 1
    assert isinstance(registry.build("mlp", in_features=1, out_features=1), MLP)


def test_one_name_from_two_third_party_packages_is_an_error_naming_both(monkeypatch, registry):
    _installed_first(monkeypatch, [EntryPoint("net", "pkg_a:build", "maml_ext.models"),
                                   EntryPoint("net", "pkg_b:build", "maml_ext.models")])
    assert registry.names().count("net") == 1
    with pytest.raises(plugins.PluginError, match=r"model 'net' is declared by more than one installed package: "
                                                  r"pkg_a:build .*, pkg_b:build .*; uninstall all but one"):
        registry.factory("net")


def test_unknown_name_with_the_kill_switch_on_says_so(monkeypatch, registry):
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "0")
    with pytest.raises(plugins.PluginError, match=r"unknown model 'sine_net'; available: .*mlp.* \(third-party plugins "
                                                  r"are off: MAML_EXT_PLUGIN_AUTOLOAD=0\)"):
        registry.factory("sine_net")
