"""The project's fixed layout and entry points."""
import subprocess
import sys

from conftest import REPO


def test_fixed_top_level_layout():
    for name in ("pipelines", "audioclip_core", "assets", "dagster_home", "tests", "pyproject.toml",
                 "workspace.yaml", "README.md", "Makefile", ".ci/run"):
        assert (REPO / name).exists(), name


def test_core_imports_no_dagster():
    code = "import sys, audioclip_core, audioclip_core.cli, audioclip_core.inference; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_definitions_load():
    from dagster import Definitions

    from pipelines.definitions import defs

    assert isinstance(defs, Definitions)


def test_console_script_help():
    exe = REPO / ".venv" / "bin" / "audioclip"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "audioclip_core.cli"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True)
    for sub in ("embed", "classify", "query", "convert"):
        assert sub in out.stdout
