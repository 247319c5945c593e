"""The plugin contract: entry-point loading, what plugins may register, and the core's independence."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from autotl import BackboneFamily, Task, hookimpl
from autotl.cli import cli
from autotl.errors import PluginError
from autotl.plugins import collect, get_registry, make_manager

OFFLINE_ZOO = ["mobilenetv2_100", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
#: the built-in plugins (entry-point name: what it registers), installed with autotl.
BUILTIN = {"timm": ["backbone family timm"], "transformers": ["backbone family transformers"],
           "image_classification": ["task image-classification"],
           "text_classification": ["task text-classification"],
           "tasks": ["task image-regression", "task image-multilabel", "task text-regression",
                     "task text-multilabel", "task token-classification"]}


# -- toy plugin objects ------------------------------------------------------------------------

class ToyFamily(BackboneFamily):
    modality = "toy"

    def __init__(self, name: str = "toy"):
        self.name = name

    def default_zoo(self):
        return []

    def owns(self, name):
        return False

    def get(self, name, weights=None):
        raise NotImplementedError


class ToyTask(Task):
    name = "toy-task"
    modality = "toy"

    def load(self, path, *, seed, val_fraction, options):
        raise NotImplementedError

    def prepare(self, data, backbone, params):
        raise NotImplementedError


class ToyPlugin:
    """Registers one family and one task, as a third-party plugin would."""

    def __init__(self, family=None):
        self.family = family if family is not None else ToyFamily()

    @hookimpl
    def register_backbone_families(self, register):
        register(self.family)

    @hookimpl
    def register_tasks(self, register):
        register(ToyTask())


class MisnamedHookPlugin:
    @hookimpl
    def register_backbones(self, register):  # no such hook: the spec is register_backbone_families
        pass


class ExtraArgumentPlugin:
    @hookimpl
    def register_tasks(self, register, config):  # the spec passes only `register`
        pass


@pytest.fixture
def no_plugin_env(monkeypatch):
    monkeypatch.delenv("AUTOTL_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("AUTOTL_BLOCK_PLUGINS", raising=False)


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch, no_plugin_env):
    """Install a plugin distribution into a folder on sys.path: ``installed_plugin(ep_name, source)``."""
    added = []

    def install(ep_name: str, source: str) -> str:
        module = f"autotl_test_plugin_{ep_name}"
        dist = tmp_path / f"{module}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[autotl]\n{ep_name} = {module}\n")
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        added.append(module)
        return module

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    for module in added:
        sys.modules.pop(module, None)


# -- the built-in plugins ------------------------------------------------------------------------

def test_builtin_plugins_register_the_image_and_text_families_and_tasks():
    registry = get_registry()
    assert {"timm", "transformers"} <= set(registry.families)
    assert {"image-classification", "text-classification"} <= set(registry.tasks)


def test_builtin_plugins_are_named_after_their_entry_points():
    provided = get_registry().provided_by
    for plugin, registers in BUILTIN.items():
        assert provided[plugin] == registers, plugin


def test_the_timm_family_serves_the_image_task():
    registry = get_registry()
    families = registry.families_for(registry.tasks["image-classification"])
    assert [f.name for f in families] == ["timm"]
    families = registry.families_for(registry.tasks["text-classification"])
    assert [f.name for f in families] == ["transformers"]


# -- what a plugin may register ------------------------------------------------------------------

def test_a_hookimpl_that_matches_no_spec_is_a_plugin_error_at_load_time(no_plugin_env):
    with pytest.raises(PluginError, match="register_backbones"):
        make_manager(extra_plugins=[MisnamedHookPlugin()])


def test_a_hookimpl_with_arguments_the_spec_lacks_is_a_plugin_error(no_plugin_env):
    with pytest.raises(PluginError, match="config"):
        make_manager(extra_plugins=[ExtraArgumentPlugin()])


def test_an_extra_plugin_adds_its_family_and_task(no_plugin_env):
    plugin = ToyPlugin()
    registry = collect(make_manager(extra_plugins=[plugin]))
    assert registry.families["toy"] is plugin.family
    assert isinstance(registry.tasks["toy-task"], ToyTask)
    assert "timm" in registry.families and "image-classification" in registry.tasks


def test_an_extra_plugin_is_listed_with_what_it_registered(no_plugin_env):
    registry = collect(make_manager(extra_plugins=[ToyPlugin()]))
    listed = [items for items in registry.provided_by.values() if "backbone family toy" in items]
    assert listed == [["backbone family toy", "task toy-task"]]


def test_a_task_without_a_target_is_refused_naming_the_task(no_plugin_env, tmp_path):
    """The core trains and scores only through the task's target: a search of a task that sets none stops before
    anything is read, saying which task and what to set."""
    import autotl

    registry = collect(make_manager(extra_plugins=[ToyPlugin()]))
    with pytest.raises(PluginError, match=r"task 'toy-task' sets no target .*set `target` on the task"):
        autotl.search(tmp_path / "data", task="toy-task", registry=registry, out=tmp_path / "run", trials=1)
    assert not (tmp_path / "run").exists()


def test_a_task_target_declares_its_own_trial_parameters(no_plugin_env):
    """What the target's loss reads (a label smoothing) is declared by the target, not the core, and a recipe may
    name it for the task that uses that target only."""
    from autotl.params import CORE, ParamError, parameters_for
    from autotl_tasks.targets import ClassLabel

    class ToyClassTask(ToyTask):
        target = ClassLabel()
        parameters = ()

    assert "label_smoothing" not in CORE
    declared = parameters_for(ToyClassTask(), [])
    assert declared.lookup("label_smoothing").high == 1 and declared.lookup("label_smoothing").default == 0.0
    with pytest.raises(ParamError, match="unknown parameter 'label_smoothing'"):
        parameters_for(type("Bare", (ToyTask,), {"parameters": ()})(), []).lookup("label_smoothing")


def test_registering_something_that_is_not_a_backbone_family_is_a_plugin_error(no_plugin_env):
    pm = make_manager(extra_plugins=[ToyPlugin(family=object())], entry_points=False)
    with pytest.raises(PluginError, match="not an autotl.BackboneFamily"):
        collect(pm)


def test_a_duplicate_family_name_is_a_plugin_error(no_plugin_env):
    pm = make_manager(extra_plugins=[ToyPlugin(family=ToyFamily("timm"))])
    with pytest.raises(PluginError, match="'timm'.*registered already"):
        collect(pm)


# -- choosing and blocking installed plugins -------------------------------------------------------

def test_autotl_load_plugins_loads_only_the_named_plugins(monkeypatch, no_plugin_env):
    monkeypatch.setenv("AUTOTL_LOAD_PLUGINS", "timm")
    registry = collect(make_manager())
    assert list(registry.families) == ["timm"]
    assert registry.tasks == {}


def test_autotl_block_plugins_blocks_the_named_plugins(monkeypatch, no_plugin_env):
    monkeypatch.setenv("AUTOTL_BLOCK_PLUGINS", "timm")
    registry = collect(make_manager())
    assert "timm" not in registry.families and set(registry.families) == {"transformers"}
    assert set(registry.tasks) == {what.split(" ", 1)[1] for registers in BUILTIN.values() for what in registers
                                   if what.startswith("task ")}


def test_a_blocked_plugin_is_not_listed_as_loaded(monkeypatch, no_plugin_env):
    monkeypatch.setenv("AUTOTL_BLOCK_PLUGINS", "timm")
    registry = collect(make_manager())
    assert set(registry.provided_by) == set(BUILTIN) - {"timm"}


def test_an_installed_plugin_is_found_through_the_entry_point_group(installed_plugin):
    installed_plugin("third_party", """
        from autotl import hookimpl

        @hookimpl
        def register_tasks(register):
            pass
    """)
    registry = collect(make_manager())
    assert registry.provided_by["third_party"] == []
    assert set(BUILTIN) <= set(registry.provided_by)


def test_an_installed_plugin_that_fails_to_import_is_a_plugin_error_naming_the_way_out(installed_plugin):
    installed_plugin("broken", "raise ImportError('needs a missing library')\n")
    with pytest.raises(PluginError, match="needs a missing library.*AUTOTL_BLOCK_PLUGINS"):
        make_manager()


def test_blocking_an_installed_plugin_that_fails_to_import_lets_the_rest_load(installed_plugin, monkeypatch):
    installed_plugin("broken", "raise ImportError('needs a missing library')\n")
    monkeypatch.setenv("AUTOTL_BLOCK_PLUGINS", "broken")
    registry = collect(make_manager())
    assert "timm" in registry.families


MARKED_PLUGIN = """
    import pathlib, sys
    pathlib.Path(__file__).with_suffix(".imported").write_text("imported")
    from autotl import hookimpl

    @hookimpl
    def register_tasks(register):
        pass
"""


@pytest.mark.parametrize("env, value", [("AUTOTL_LOAD_PLUGINS", "timm,image_classification"),
                                        ("AUTOTL_BLOCK_PLUGINS", "third_party")])
def test_a_plugin_left_out_by_the_allow_or_block_list_is_never_imported(installed_plugin, monkeypatch, tmp_path,
                                                                        env, value):
    module = installed_plugin("third_party", MARKED_PLUGIN)
    monkeypatch.setenv(env, value)
    registry = collect(make_manager())
    assert "third_party" not in registry.provided_by
    assert module not in sys.modules, "a plugin the environment left out was imported: its code ran"
    assert not list(tmp_path.glob("*.imported"))


def test_the_allow_list_names_the_only_plugins_that_load(installed_plugin, monkeypatch, tmp_path):
    module = installed_plugin("third_party", MARKED_PLUGIN)
    monkeypatch.setenv("AUTOTL_LOAD_PLUGINS", "third_party")
    registry = collect(make_manager())
    assert set(registry.provided_by) == {"third_party"} and module in sys.modules
    assert list(tmp_path.glob("*.imported"))  # the marker works: this time the plugin was imported
    assert registry.families == {} and registry.tasks == {}


def test_a_module_on_the_path_without_an_entry_point_is_never_loaded(tmp_path, monkeypatch, no_plugin_env):
    """Plugins come from installed distributions' entry points only, never from a name or a folder on the path."""
    (tmp_path / "autotl_sneaky.py").write_text(textwrap.dedent("""
        raise AssertionError("autotl imported a module that no installed distribution declares as a plugin")
    """))
    (tmp_path / "autotl_plugins").mkdir()
    (tmp_path / "autotl_plugins" / "__init__.py").write_text("raise AssertionError('imported autotl_plugins')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    registry = collect(make_manager())
    assert "autotl_sneaky" not in sys.modules and "autotl_plugins" not in sys.modules
    assert set(registry.provided_by) == set(BUILTIN)


def test_an_installed_plugin_with_a_bad_hook_signature_is_a_plugin_error(installed_plugin):
    installed_plugin("badsig", """
        from autotl import hookimpl

        @hookimpl
        def register_tasks(register, config):
            pass
    """)
    with pytest.raises(PluginError, match="badsig"):
        make_manager()


# -- the core stays independent of the plugins -----------------------------------------------------

def test_the_core_imports_no_plugin_and_no_model_library():
    code = textwrap.dedent("""
        import sys
        import autotl, autotl.cli, autotl.controller, autotl.plugins, autotl.leaderboard, autotl.adapt, autotl.training
        import autotl.api, autotl.transfer
        loaded = [m for m in ("timm", "transformers", "peft", "autotl_timm", "autotl_image", "autotl_transformers",
                              "autotl_text") if m in sys.modules]
        assert not loaded, loaded
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- `autotl plugins` --------------------------------------------------------------------------------

def test_autotl_plugins_lists_the_builtin_plugins_and_the_offline_zoo():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    for plugin, registers in BUILTIN.items():
        assert f"{plugin}: {', '.join(registers)}" in result.output
    assert f"timm offline zoo: {', '.join(OFFLINE_ZOO)}" in result.output
    assert "  transformers offline zoo: " in result.output
    assert "task image-classification: served by timm" in result.output
    assert "task text-classification: served by transformers" in result.output


def test_autotl_plugins_json_parses_and_holds_the_zoo():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = {entry["plugin"]: entry for entry in json.loads(result.stdout)}
    assert listing["timm"]["registers"] == ["backbone family timm"]
    assert listing["timm"]["default_zoo"] == {"timm": OFFLINE_ZOO}
    assert listing["image_classification"]["registers"] == ["task image-classification"]
    assert "default_zoo" not in listing["image_classification"]


# -- the typed contracts (autotl/contracts.py) at the CLI ------------------------------------------

REPORT_PLUGIN = """
    from autotl import hookimpl
    from autotl_image import ImageClassification


    class BadReport(ImageClassification):
        name = "bad-report-classification"

        def load(self, path, *, seed, val_fraction, options):
            data = super().load(path, seed=seed, val_fraction=val_fraction, options=options)
            data.report = {report!r}
            return data


    @hookimpl
    def register_tasks(register):
        register(BadReport())
"""


@pytest.mark.parametrize("report, message", [
    (["a list"], "a task's LoadedData.report is a list; make it an autotl.DataReport"),
    ({"skipped": ["x.png"]}, "a data report's skipped item must be an autotl.SkippedItem(file, reason)"),
])
def test_a_data_report_that_breaks_the_contract_is_one_plugin_error_line(installed_plugin, tmp_path, tiny_folder,
                                                                         tiny_weights, report, message):
    import tiny

    installed_plugin("bad_report", REPORT_PLUGIN.replace("{report!r}", repr(report)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((Path(__file__).parent / "data" / "tiny-image.yaml").read_text()
                      .replace("task: image-classification", "task: bad-report-classification"))
    get_registry.cache_clear()  # the registry with the plugin just installed, and without it afterwards
    try:
        result = CliRunner().invoke(cli, ["search", str(tiny_folder), "--task", "bad-report-classification", "--out",
                                          str(tmp_path / "run"), "--recipe", str(recipe), "--trials", "1", "--device",
                                          "cpu", "--models", tiny.TINY, "--weights", f"{tiny.TINY}={tiny_weights}"])
    finally:
        get_registry.cache_clear()
    assert result.exit_code == 5, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output, result.output
