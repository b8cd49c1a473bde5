"""Render the Slicer module's panel from its .ui file, offscreen: ``docs/panel.png``.

Needs only PySide6 (``pip install PySide6-Essentials``, in any Python; not a dependency of
the project) and no Slicer: ``QT_QPA_PLATFORM=offscreen python docs/make_panel_picture.py``.
The panel is loaded with ``QUiLoader`` from ``Resources/UI/VerdiffSegment.ui`` as Slicer
loads it; the three Slicer widgets it uses are drawn by Qt stand-ins (a titled group box for
``ctkCollapsibleButton``, a combo box for ``qMRMLNodeComboBox``, a plain widget for
``qMRMLWidget``). The lists and values are what the module shows for an MR volume with the
bundled models: ``auto`` and the cards' names, the default MR card's description (in the
words of the module's ``_updateModelInfo``) and sampling defaults.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Property, QFile  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import QApplication, QComboBox, QGroupBox, QWidget  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class ctkCollapsibleButton(QGroupBox):  # noqa: N801 - the name the .ui asks for
    """Stand-in: CTK's collapsible section, drawn as an expanded titled group box."""

    def _text(self) -> str:
        return self.title()

    def _set_text(self, text: str) -> None:
        self.setTitle(text)

    text = Property(str, _text, _set_text)


class qMRMLNodeComboBox(QComboBox):  # noqa: N801
    """Stand-in: the MRML node selector, showing one loaded volume."""


class qMRMLWidget(QWidget):  # noqa: N801
    """Stand-in: the module panel's base widget."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "panel.png")
    parser.add_argument("--volume", default="VB3_17_img", help="the input volume's name shown in the selector")
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    loader = QUiLoader()
    for stand_in in (ctkCollapsibleButton, qMRMLNodeComboBox, qMRMLWidget):
        loader.registerCustomWidget(stand_in)
    ui_file = QFile(str(REPO / "Resources" / "UI" / "VerdiffSegment.ui"))
    ui_file.open(QFile.ReadOnly)
    panel = loader.load(ui_file)
    ui_file.close()

    cards = [json.loads(path.read_text()) for path in sorted((REPO / "Resources" / "Models").glob("*.json"))]
    mr = next(card for card in cards if card["name"] == "verdiff-mr")
    panel.findChild(QComboBox, "inputVolumeSelector").addItem(args.volume)
    models = panel.findChild(QComboBox, "modelComboBox")
    models.addItems(["auto"] + [card["name"] for card in cards])
    devices = panel.findChild(QComboBox, "deviceComboBox")
    devices.addItems(["auto", "cpu", "cuda"])
    panel.findChild(QWidget, "stepsSpinBox").setValue(mr["defaults"]["steps"])
    panel.findChild(QWidget, "ensembleSpinBox").setValue(mr["defaults"]["ensemble"])
    # The model description as the module's _updateModelInfo writes it for "auto" on an MR volume.
    labels = "; ".join(f"{label['name']}: {label.get('covers', '')}" for label in mr["labels"])
    panel.findChild(QWidget, "modelInfoLabel").setText(
        f"auto picks verdiff-mr (v{mr['version']}, {mr['family']}, {mr['modality']}). {labels}. "
        f"Defaults: {mr['defaults']['steps']} steps, ensemble of {mr['defaults']['ensemble']}."
    )
    panel.findChild(QWidget, "applyButton").setEnabled(True)  # enabled once an input is selected
    panel.findChild(QWidget, "progressBar").hide()  # hidden until a run starts, as in Slicer
    panel.findChild(QWidget, "dependenciesCollapsibleButton").hide()  # shown only without PyTorch

    panel.resize(420, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    panel.grab().save(str(args.out))
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB, {panel.width()} x {panel.height()} px")


if __name__ == "__main__":
    main()
