"""The Slicer module's files, checked without Slicer: the .ui has every widget the module
reaches (with the class the code expects), the parameter-node bindings match the
parameter node, the module compiles, only it imports Qt/CTK/slicer.app, the core imports
without PyTorch, and CMakeLists.txt names files that exist (and every core file)."""

from __future__ import annotations

import ast
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "VerdiffSegment"
MODULE = MODULE_DIR / "VerdiffSegment.py"
LIB = MODULE_DIR / "VerdiffSegmentLib"
UI = REPO / "Resources" / "UI" / "VerdiffSegment.ui"
ICON = REPO / "Resources" / "Icons" / "VerdiffSegment.png"
CMAKE = REPO / "CMakeLists.txt"

# Every widget the module reaches as self.ui.NAME, with the class it is used as.
EXPECTED_WIDGETS = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "modelComboBox": "QComboBox",
    "modelInfoLabel": "QLabel",
    "stepsSpinBox": "QSpinBox",
    "ensembleSpinBox": "QSpinBox",
    "seedSpinBox": "QSpinBox",
    "deviceComboBox": "QComboBox",
    "deviceInfoLabel": "QLabel",
    "applyButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "showUncertaintyCheckBox": "QCheckBox",
    "outputsLabel": "QLabel",
    "dependenciesCollapsibleButton": "ctkCollapsibleButton",
    "dependenciesLabel": "QLabel",
    "installDependenciesButton": "QPushButton",
}

# Which widget class the parameter node wrapper can bind to which annotated type
# (Slicer's parameterNodeWrapper/guiConnectors.py: exact widget types).
CONNECTOR_WIDGETS = {
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "bool": {"QCheckBox", "QPushButton"},
    "str+Choice": {"QComboBox"},
    "str": {"QLineEdit", "QTextEdit"},
    "node": {"qMRMLNodeComboBox"},
}


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI).getroot()
    return {widget.get("name"): widget for widget in root.iter("widget")}


def module_tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"), filename=str(MODULE))


def parameter_fields() -> dict[str, str]:
    """Fields of the @parameterNodeWrapper class: name -> connector kind."""
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.ClassDef) and any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list
        ):
            fields = {}
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    text = ast.unparse(statement.annotation)
                    if text.startswith("vtkMRML"):
                        kind = "node"
                    else:
                        base = re.match(r"(?:Annotated\[)?(\w+)", text).group(1)
                        kind = base + ("+Choice" if "Choice(" in text else "")
                    fields[statement.target.id] = kind
            return fields
    raise AssertionError("no @parameterNodeWrapper class in VerdiffSegment.py")


# ---------------------------------------------------------------------------- .ui


def test_ui_is_valid_designer_xml():
    root = ET.parse(UI).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "VerdiffSegment"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if not c.startswith("Q")}
    assert custom <= declared, f"custom widgets used but not declared: {custom - declared}"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"


def test_every_widget_the_module_reaches_exists_with_its_class():
    reached = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text(encoding="utf-8"))) | set(re.findall(r"widget\.ui\.(\w+)", MODULE.read_text(encoding="utf-8")))
    widgets = ui_widgets()
    unknown = reached - set(EXPECTED_WIDGETS)
    assert not unknown, f"the module reaches widgets this test does not know: {unknown}"
    for name in sorted(reached):
        assert name in widgets, f"self.ui.{name} is not in {UI.name}"
        assert widgets[name].get("class") == EXPECTED_WIDGETS[name], f"{name} is a {widgets[name].get('class')}, expected {EXPECTED_WIDGETS[name]}"


def test_parameter_bindings_match_the_parameter_node():
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property (stdset=0)"
                bound[prop.findtext("string")] = widget
    unbound = {"model", "defaultsFromModel"}  # the model selector is filled from the cards by hand
    assert set(bound) == set(fields) - unbound, f"bound {sorted(bound)} vs fields {sorted(fields)}"
    for parameter, widget in bound.items():
        kind = fields[parameter]
        assert widget.get("class") in CONNECTOR_WIDGETS[kind], f"{parameter} ({kind}) bound to a {widget.get('class')}"
    # ranges in the .ui agree with the parameter node's, which are the request's limits (settings.py)
    from VerdiffSegmentLib import settings

    text = MODULE.read_text(encoding="utf-8")
    for parameter, limits, low, high in (("steps", "STEPS_LIMITS", 1, 1000), ("ensemble", "ENSEMBLE_LIMITS", 1, 32), ("seed", "SEED_LIMITS", 0, 2147483647)):
        assert re.search(rf"{parameter}: Annotated\[int, WithinRange\(\*{limits}\)\]", text), parameter
        assert getattr(settings, limits) == (low, high), limits
        widget = bound[parameter]
        numbers = {p.get("name"): int(p.findtext("number")) for p in widget.findall("property") if p.find("number") is not None}
        assert (numbers["minimum"], numbers["maximum"]) == (low, high)
    selector = ui_widgets()["inputVolumeSelector"]
    types = [s.text for p in selector.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
    assert types == ["vtkMRMLScalarVolumeNode"]


def test_ui_connects_the_scene_to_the_node_selector():
    root = ET.parse(UI).getroot()
    connections = {(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot")) for c in root.iter("connection")}
    assert ("VerdiffSegment", "mrmlSceneChanged(vtkMRMLScene*)", "inputVolumeSelector", "setMRMLScene(vtkMRMLScene*)") in connections


def test_apply_button_says_segment_vertebrae():
    button = ui_widgets()["applyButton"]
    assert [p.findtext("string") for p in button.findall("property") if p.get("name") == "text"] == ["Segment vertebrae"]
    text = MODULE.read_text(encoding="utf-8")
    assert '_("Segment vertebrae")' in text and '_("Cancel")' in text


# ------------------------------------------------------------------------- python


def test_module_compiles(tmp_path):
    py_compile.compile(str(MODULE), cfile=str(tmp_path / "VerdiffSegment.pyc"), doraise=True)


def test_module_follows_the_scripted_module_template():
    tree = module_tree()
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes["VerdiffSegment"] == ["ScriptedLoadableModule"]
    assert classes["VerdiffSegmentWidget"][0] == "ScriptedLoadableModuleWidget"
    assert classes["VerdiffSegmentLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["VerdiffSegmentTest"] == ["ScriptedLoadableModuleTest"]
    assert "VerdiffSegmentParameterNode" in classes
    text = MODULE.read_text(encoding="utf-8")
    assert "from slicer.i18n import tr as _" in text
    # dependencies: installed the Slicer way, through the Slicer-bound helper the module calls
    installer = (LIB / "slicer_bound" / "dependencies.py").read_text(encoding="utf-8")
    assert "PyTorchUtils" in installer and "slicer.util.pip_install" in installer and "dependencies.install(" in text
    assert "slicer.util.errorDisplay" in text


def test_module_is_at_most_450_lines_of_gui_glue_and_pyflakes_clean():
    """Issue 12: the module file stays thin; the logic is in VerdiffSegmentLib."""
    assert len(MODULE.read_text(encoding="utf-8").splitlines()) <= 450
    out = subprocess.run([sys.executable, "-m", "pyflakes", str(MODULE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_segmentation_runs_as_a_process_not_a_thread():
    """The widget starts ``verdiff segment`` with qt.QProcess and reads its progress from the
    process's output: no Python worker thread, no polling timer that sleeps to yield the GIL."""
    tree = module_tree()
    widget = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "VerdiffSegmentWidget")
    code = ast.unparse(widget)
    assert "qt.QProcess()" in code and "readyReadStandardError()" in code and "feed_stderr" in code
    assert ".terminate()" in code and ".kill()" in code  # Cancel: terminate, then kill
    assert "time.sleep" not in code and "setInterval" not in code
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    assert "threading" not in imported and "BackgroundJob" not in MODULE.read_text(encoding="utf-8")


GUI_MODULES = {"qt", "ctk", "PythonQt", "PyQt5", "PyQt6", "PySide2", "PySide6", "qSlicerSubjectHierarchyModuleWidgetsPythonQt"}
GUI_SLICER_ATTRIBUTES = {"app", "mrmlScene", "modules", "qMRMLNodeComboBox", "qSlicerApplication"}


def gui_uses(path: Path) -> list[str]:
    """Imports of Qt/CTK and uses of slicer.app-like attributes in the code (not in text)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] in GUI_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in GUI_MODULES:
            found.append(node.module)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer" and node.attr in GUI_SLICER_ATTRIBUTES:
            found.append(f"slicer.{node.attr}")
    return found


def test_only_the_module_file_imports_qt_ctk_or_slicer_app():
    offenders = {}
    for path in sorted(MODULE_DIR.rglob("*.py")):
        if path != MODULE and gui_uses(path):
            offenders[str(path.relative_to(REPO))] = gui_uses(path)
    assert not offenders, f"Qt/CTK/slicer.app outside VerdiffSegment.py: {offenders}"
    assert {"qt", "slicer.app"} <= set(gui_uses(MODULE))


def test_slicer_logic_imports_without_qt_and_without_torch():
    """Slicer must be able to load the module (and offer to install PyTorch) without torch."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from VerdiffSegmentLib.slicer_bound import slicer_logic, testing\n"
        "print('torch' in sys.modules, 'qt' in sys.modules)\n" % str(MODULE_DIR)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"], out.stdout


# -------------------------------------------------------------------------- cmake


def cmake_text() -> str:
    return CMAKE.read_text(encoding="utf-8")


def test_cmake_declares_the_extension():
    text = cmake_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key}\s+\"[^\"]+\"\)", text), key
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Segmentation"\)', text)
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"PyTorch"\)', text)
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert "slicerMacroBuildScriptedModule(" in text


def cmake_list(name: str) -> list[str]:
    match = re.search(rf"set\({name}\s*\n(.*?)\n\s*\)", cmake_text(), re.S)
    assert match, name
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def test_cmake_names_files_that_exist_and_every_core_file():
    scripts = cmake_list("MODULE_PYTHON_SCRIPTS")
    for script in scripts:
        assert (MODULE_DIR / script).is_file(), f"CMakeLists.txt names a missing script {script}"
    on_disk = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert on_disk == set(scripts), f"not in CMakeLists.txt: {on_disk - set(scripts)}; not on disk: {set(scripts) - on_disk}"
    resources = [r for r in cmake_list("MODULE_PYTHON_RESOURCES") if not r.startswith("${")]
    for resource in resources:
        assert (REPO / resource).is_file(), f"CMakeLists.txt names a missing resource {resource}"
    assert {"Resources/UI/VerdiffSegment.ui", "Resources/Icons/VerdiffSegment.png"} <= set(resources)
    # the models are globbed: the patterns must find every bundled card and its weights
    for pattern in re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(Resources/Models/\*\.\w+)", cmake_text()):
        assert list(REPO.glob(pattern)), f"{pattern} matches nothing"


def test_installed_layout_finds_resources_and_models(tmp_path):
    """Lay the files out as the CMake install does (module, package and Resources side by
    side) and check that the module's resource lookup and models_dir() find them."""
    import shutil

    target = tmp_path / "qt-scripted-modules"
    for script in cmake_list("MODULE_PYTHON_SCRIPTS"):
        (target / script).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODULE_DIR / script, target / script)
    for pattern in ["Resources/UI/*.ui", "Resources/Icons/*.png", "Resources/Models/*.json"]:
        for source in REPO.glob(pattern):
            (target / source.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / source.relative_to(REPO))
    code = (
        "import sys, os; sys.path.insert(0, %r)\n"
        "os.environ.pop('VERDIFF_MODELS_DIR', None)\n"
        "from VerdiffSegmentLib import models\n"
        "print(models.__file__); print(models.models_dir())\n" % str(target)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    module_file, models_dir = out.stdout.split()[-2:]
    assert Path(module_file).is_relative_to(target)
    assert Path(models_dir) == target / "Resources" / "Models"
    # the module's own lookup (resourcePath) uses the same rule: beside it, else one up
    source = MODULE.read_text(encoding="utf-8")
    assert 'for base in (moduleDir, os.path.dirname(moduleDir))' in source


@pytest.mark.parametrize("path", [UI, ICON, MODULE])
def test_files_exist(path):
    assert path.is_file()


def test_icon_is_128_png():
    from PIL import Image

    with Image.open(ICON) as image:
        assert image.format == "PNG" and image.size == (128, 128)
