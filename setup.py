"""The one thing pyproject.toml cannot say: a wheel carries the bundled models.

``Resources/Models`` (cards and weights, about 30 MB) sits at the top of the repository,
outside the ``VerdiffSegmentLib`` package, where the Slicer extension (CMakeLists.txt) and
the checkout find it. A wheel gets a copy inside the package,
``VerdiffSegmentLib/Resources/Models``, which ``models.models_dir()`` finds first when it
looks for ``Resources/Models`` in the folders above its own file. The files are copied at
build time, so git keeps one set; the selection is CMakeLists.txt's (every ``*.json`` card
and ``*.pt`` weights file). An editable install reads ``Resources/Models`` in place.
The UI and icon stay out: they belong to the Slicer module, which a wheel does not install.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MODELS = ROOT / "Resources" / "Models"
PACKAGED_MODELS = Path("VerdiffSegmentLib") / "Resources" / "Models"
MODEL_SUFFIXES = (".json", ".pt")


def bundled_model_files() -> list[Path]:
    files = sorted(p for p in MODELS.glob("*") if p.suffix in MODEL_SUFFIXES) if MODELS.is_dir() else []
    if not any(p.suffix == ".json" for p in files):
        # A build from an sdist without them (MANIFEST.in grafts them) would give a wheel that finds no model.
        raise SystemExit(f"no bundled models found in {MODELS}")
    return files


class BuildWithModels(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / PACKAGED_MODELS
        self.mkpath(str(target))
        for source in bundled_model_files():
            self.copy_file(str(source), str(target / source.name))


if __name__ == "__main__":  # as setuptools runs it; Testing/test_packaging.py imports the file selection
    setup(cmdclass={"build_py": BuildWithModels})
