"""What the two installs carry, checked against the tree without building them: CMakeLists.txt
(the Slicer extension) lists every resource the module loads and installs every bundled model
with the weights its card names; the wheel (pyproject.toml, setup.py) finds every package and
carries the same models. The wheel itself is built, installed into a fresh virtual environment
and run in .ci/run; CMakeLists' script list is held against the .py files in
test_module_files.py."""

from __future__ import annotations

import importlib.util
import json
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from setuptools import find_namespace_packages, find_packages

from conftest import MODELS, REPO

CMAKE = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
MODULE = REPO / "VerdiffSegment" / "VerdiffSegment.py"


def cmake_list(name: str) -> list[str]:
    match = re.search(rf"set\({name}\s*\n(.*?)\n\s*\)", CMAKE, re.S)
    assert match, f"no set({name} ...) in CMakeLists.txt"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def cmake_globbed_models() -> set[str]:
    """The files CMakeLists.txt's ``file(GLOB _model_files ...)`` installs, relative to the repository."""
    patterns = re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(Resources/Models/\*\.\w+)", CMAKE)
    assert patterns, "CMakeLists.txt no longer globs Resources/Models"
    return {str(path.relative_to(REPO)) for pattern in patterns for path in REPO.glob(pattern)}


def test_cmake_lists_every_resource_the_module_loads():
    loaded = set(re.findall(r'resourcePath\(\s*"([^"]+)"\s*\)', MODULE.read_text(encoding="utf-8")))
    assert {"UI/VerdiffSegment.ui", "Icons/VerdiffSegment.png"} <= loaded, loaded
    listed = cmake_list("MODULE_PYTHON_RESOURCES")
    for resource in sorted(loaded):
        assert f"Resources/{resource}" in listed, f"the module loads Resources/{resource}, which CMakeLists.txt does not install"
    for resource in listed:
        assert resource.startswith("${") or (REPO / resource).is_file(), f"CMakeLists.txt installs a missing {resource}"
    assert "${_model_files}" in listed


def test_cmake_and_the_wheel_carry_every_card_and_the_weights_it_names():
    # setup.py's own file selection (setup() runs only as __main__, as setuptools runs the file)
    spec = importlib.util.spec_from_file_location("verdiff_setup", REPO / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    installed = cmake_globbed_models()
    cards = sorted(MODELS.glob("*.json"))
    assert cards
    for card in cards:
        data = json.loads(card.read_text(encoding="utf-8"))
        level_map = (data.get("naming") or {}).get("level_map")  # the network that names an X-ray card's vertebrae
        tilt_network = (data.get("cobb") or {}).get("tilt_network")  # the one its Cobb angles' tilts come from
        level_network = (data.get("naming") or {}).get("level_network")  # the vertebra-level network (measured, session 9)
        weights = {data["weights"]} | {helper["weights"] for helper in (level_map, tilt_network, level_network) if helper}
        assert {f"Resources/Models/{card.name}"} | {f"Resources/Models/{w}" for w in weights} <= installed, card.name
    assert {str(path.relative_to(REPO)) for path in setup.bundled_model_files()} == installed


def test_the_wheel_finds_every_package_of_the_tree():
    """pyproject.toml finds packages (a hand-kept list once left two out): run its search as
    setuptools does and compare with every folder of Python files under the two packages."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]["find"]
    finder = find_namespace_packages if find.get("namespaces", True) else find_packages
    found = {package for where in find["where"] for package in finder(where=str(REPO / where), include=find["include"], exclude=find.get("exclude", ()))}
    roots = {"VerdiffSegmentLib": REPO / "VerdiffSegment" / "VerdiffSegmentLib", "training": REPO / "training"}
    on_disk = {
        ".".join((name, *folder.relative_to(root).parts))
        for name, root in roots.items()
        for folder in [root, *root.rglob("*")]
        if folder.is_dir() and "__pycache__" not in folder.parts and any(folder.glob("*.py"))
    }
    assert on_disk <= found, f"not in the wheel: {sorted(on_disk - found)}"
    assert all(package.split(".")[0] in roots for package in found), found
