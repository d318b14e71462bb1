"""The project's fixed layout, its layers and its entry points."""

import ast
import re
import subprocess
import sys

from conftest import REPO

CORE = REPO / "audioclip_core"


def test_fixed_top_level_layout():
    for name in (
        "pipelines",
        "audioclip_core",
        "assets",
        "dagster_home",
        "tests",
        "pyproject.toml",
        "workspace.yaml",
        "README.md",
        "Makefile",
        ".ci/run",
    ):
        assert (REPO / name).exists(), name


def _modules(folder):
    for path in sorted(folder.rglob("*.py")):
        yield ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"), path


def test_core_imports_no_dagster_nor_mlflow():
    """Every module of the core imports, from a notebook, without the pipeline's packages."""
    names = [name for name, _ in _modules(CORE)]
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        "print(sorted(m for m in ('dagster', 'mlflow', 'dagster_webserver') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _imports(name, path):
    """The absolute names of the audioclip_core modules that `path` (module `name`) imports."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith("audioclip_core")}


def test_layers_point_one_way():
    """data/ is the ground floor: it imports neither acquisition, training, evaluation nor the
    CLI; acquisition, training and evaluation do not import each other (evaluation may use
    what data/ offers, not training's code)."""
    above = {
        "data": ("acquisition", "training", "evaluation", "cli", "inference"),
        "acquisition": ("training", "evaluation", "cli"),
        "evaluation": ("training", "acquisition", "cli"),
        "training": ("evaluation", "acquisition", "cli"),
    }
    wrong = []
    for name, path in _modules(CORE):
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in above:
            continue
        for imp in _imports(name, path):
            target = imp.split(".")
            if len(target) > 1 and target[1] in above[parts[1]]:
                wrong.append(f"{name} imports {imp}")
    assert not wrong, wrong


def test_paths_under_the_data_root_come_from_the_layout():
    """Only audioclip_core/layout.py spells the data root's folders and files."""
    pattern = re.compile(
        r'/ "(checkpoints|manifests|folds|tables|plots|segments|downloads|clips|mlflow|'
        r'demo_source|sources)"|"catalog\.duckdb"|"mlflow\.db"|"manifest\.parquet"'
    )
    found = []
    for folder in (CORE, REPO / "assets", REPO / "pipelines"):
        for path in folder.rglob("*.py"):
            if path == CORE / "layout.py":
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, found


def _environ_writes(path):
    """Lines of `path` that change the process environment (os.environ[...] = ..., its
    setdefault / update / pop / clear, os.putenv / unsetenv)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_environ = lambda n: isinstance(n, ast.Attribute) and n.attr == "environ"  # noqa: E731
    lines = []
    for node in ast.walk(tree):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AugAssign, ast.AnnAssign))
            else node.targets
            if isinstance(node, ast.Delete)
            else []
        )
        if any(isinstance(t, ast.Subscript) and is_environ(t.value) for t in targets):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if (is_environ(f.value) and f.attr in ("setdefault", "update", "pop", "clear", "popitem")) or (
                isinstance(f.value, ast.Name) and f.value.id == "os" and f.attr in ("putenv", "unsetenv")
            ):
                lines.append(node.lineno)
    return lines


def test_library_and_assets_leave_the_environment_alone():
    """The core and the assets read the environment, never write it (entry points - the CLI's
    main, pipelines/ - may set their process's defaults)."""
    found = [
        f"{p.relative_to(REPO)}:{n}"
        for folder in (CORE, REPO / "assets")
        for p in sorted(folder.rglob("*.py"))
        for n in _environ_writes(p)
    ]
    assert not found, found
    assert _environ_writes(REPO / "pipelines" / "instance.py"), "the check finds a known write"


def test_definitions_validate_and_every_job_resolves():
    import dagster as dg

    from pipelines.definitions import defs

    dg.Definitions.validate_loadable(defs)  # a broken resource or asset graph raises here
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert {"audioset_data", "evaluate_released", "retrain_audioset_chain"} <= jobs
    for name in jobs:
        assert defs.resolve_job_def(name).name == name
    released = defs.resolve_job_def("evaluate_released")
    tables = {k.to_user_string() for k in released.asset_layer.executable_asset_keys}
    assert tables == {"table1_esresnext", "table2_audioclip", "table3_zero_shot", "table4_querying"}


def test_console_script_help():
    exe = REPO / ".venv" / "bin" / "audioclip"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "audioclip_core.cli"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True)
    for sub in ("embed", "classify", "query", "convert"):
        assert sub in out.stdout


def test_every_asset_check_says_what_it_checks():
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    specs = [graph.get_check_spec(key) for key in graph.asset_check_keys]
    assert len(specs) >= 10
    missing = [f"{s.asset_key.to_user_string()}:{s.name}" for s in specs if not (s.description or "").strip()]
    assert not missing, missing


def _core_graph() -> dict[str, set[str]]:
    """module -> the core modules it imports (at the top or inside functions: an import inside a
    function is still an arrow)."""
    names = {n for n, _ in _modules(CORE)}
    graph = {}
    for name, path in _modules(CORE):
        deps = set()
        for imp in _imports(name, path):
            while imp and imp not in names:
                imp = imp.rsplit(".", 1)[0] if "." in imp else ""
            if imp and imp != name and not name.startswith(imp + "."):  # a package's own __init__ aside
                deps.add(imp)
        graph[name] = deps
    return graph


def test_no_import_cycle_inside_the_core():
    """Inside packages too: no module reaches itself through the core's imports (a cycle hidden
    by an import inside a function counts)."""
    graph = _core_graph()
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not cycles, cycles[:5]


def test_assets_never_import_pipelines():
    """Arrows point down: pipelines/ assembles the Definitions from assets/, never the reverse
    (the deployment's settings reach the assets as resource fields)."""
    wrong = []
    for path in sorted((REPO / "assets").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            wrong += [f"{path.relative_to(REPO)} imports {m}" for m in mods if m.split(".")[0] == "pipelines"]
        if "pipelines." in path.read_text(encoding="utf-8").replace("pipelines/", ""):
            text = path.read_text(encoding="utf-8")
            wrong += [
                f"{path.relative_to(REPO)} names a pipelines module: {line.strip()}"
                for line in text.splitlines()
                if '"pipelines.' in line or "'pipelines." in line
            ]
    assert not wrong, wrong
