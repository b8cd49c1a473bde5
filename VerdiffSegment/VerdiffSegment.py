"""3D Slicer module "Verdiff Segment": vertebrae and vertebral bodies with a
diffusion model, and a per-voxel uncertainty volume.

This is the only file of the extension that imports Qt, CTK or ``slicer.app``. It draws
the GUI (``Resources/UI/VerdiffSegment.ui``), keeps the settings in a parameter node and
runs the work off the main thread; the work itself is the Qt-free
``VerdiffSegmentLib.slicer_logic``, which also runs headless (and is tested there).
"""

import importlib
import importlib.util
import logging
import os
import time
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from VerdiffSegmentLib import slicer_logic
from VerdiffSegmentLib.errors import VerdiffError

MODULE_NAME = "VerdiffSegment"

# PyTorch comes from the PyTorch extension (PyTorchUtils picks the build for the GPU);
# the rest through pip. numpy and SimpleITK ship with Slicer: listed so that a broken
# Python environment is repaired the same way.
TORCH_REQUIREMENT = ">=2.1"
PIP_REQUIREMENTS = {"numpy": "numpy", "SimpleITK": "SimpleITK"}  # module name -> pip requirement

# How often the GUI polls the worker, and how long each poll sleeps. Slicer's main thread
# holds Python's GIL while Qt's event loop runs, so a Python worker thread only advances
# while the main thread is inside Python and lets go of the GIL: the short sleep does
# that (as Slicer's own Python threading recipes do); PyTorch's kernels run without it.
POLL_INTERVAL_MS = 25
GIL_YIELD_SECONDS = 0.015


def _moduleDir() -> str:
    try:
        return os.path.dirname(slicer.util.modulePath(MODULE_NAME))
    except Exception:  # noqa: BLE001 - module not registered yet (while it is being loaded)
        return os.path.dirname(os.path.abspath(__file__))


def resourcePath(relativePath: str) -> str:
    """A file of ``Resources/``: beside the module when installed (CMake copies it
    there), one folder up in the source tree, where ``Resources/`` is at the top."""
    moduleDir = _moduleDir()
    for base in (moduleDir, os.path.dirname(moduleDir)):
        candidate = os.path.join(base, "Resources", relativePath)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(moduleDir, "Resources", relativePath)


#
# VerdiffSegment
#


class VerdiffSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Verdiff Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["VerdiffSegment contributors"]
        self.parent.helpText = _(
            "Segments the vertebrae (CT) or vertebral bodies (MR, X-ray) of a spine image with a "
            "diffusion model (Verdiff-Net) and shows where the model is unsure: an ensemble of samples "
            "gives the segmentation (their mean) and an uncertainty volume (their spread). "
            "Select the input volume and press <b>Segment vertebrae</b>. "
            "See the extension's documentation (docs/slicer.md) for how to read the uncertainty."
        )
        self.parent.acknowledgementText = _(
            "The bundled models were trained on public data sets named in their model cards "
            "(Resources/Models/*.json); cite their authors. Verdiff-Net follows the paper cited in the README."
        )
        iconPath = resourcePath("Icons/VerdiffSegment.png")
        if os.path.exists(iconPath):
            self.parent.icon = qt.QIcon(iconPath)


#
# VerdiffSegmentParameterNode
#


@parameterNodeWrapper
class VerdiffSegmentParameterNode:
    """
    The settings of the module, saved with the scene.

    inputVolume - the volume to segment.
    model - "auto" or the name of a bundled model card.
    steps - sampling steps per sample (the model's default when the model changes).
    ensemble - number of samples; their spread is the uncertainty.
    seed - seed of the sampling noise.
    device - "auto", "cpu" or "cuda".
    showUncertainty - show the uncertainty volume over the input after a run.
    defaultsFromModel - the model whose default steps and ensemble were last applied
        (saved with the scene, so reopening a scene keeps the user's values).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = "auto"
    steps: Annotated[int, WithinRange(1, 1000)] = 5  # the widest any card takes; the spin box narrows to the chosen card's (_updateModelInfo)
    ensemble: Annotated[int, WithinRange(1, 32)] = 3
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    showUncertainty: bool = True
    defaultsFromModel: str = ""


#
# VerdiffSegmentWidget
#


class VerdiffSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False
        self._job = None
        self._jobInput = None
        self._cardCache = {}
        self._deviceInfo = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(resourcePath("UI/VerdiffSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = VerdiffSegmentLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._onPoll)

        self.ui.progressBar.hide()
        self._updateDependencies()
        self._populateModels()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._job is not None:
            self._job.cancel()
            self._job.wait(5.0)
            self._job = None
        self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:  # results of a closed scene must not land in the next one
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[VerdiffSegmentParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a SlicerParameterName property in the .ui are bound here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._updateDeviceInfo()
        self._onParameterNodeModified()

    # ---------------------------------------------------------------- GUI updates

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            self._showModelChoice()
            self._updateModelInfo()
            self._updateDeviceInfo(refresh=False)
            self._updateApplyButton()
        finally:
            self._updatingGUI = False

    def _updateApplyButton(self) -> None:
        if self._job is not None:
            self.ui.applyButton.enabled = not self._job.cancel_requested
            return
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = hasInput
        self.ui.applyButton.toolTip = _("Segment the vertebrae of the input volume.") if hasInput else _("Select an input volume.")

    def _populateModels(self) -> None:
        """Fill the model selector from the bundled cards; "auto" comes first."""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            combo.addItem(_("auto (pick by modality)"), "auto")
            for card in slicer_logic.list_models():
                labels = ", ".join(label["name"] for label in card.labels)
                combo.addItem(f"{card.name} ({card.modality}): {labels}", card.name)
                combo.setItemData(combo.count - 1, card.summary(), qt.Qt.ToolTipRole)
        finally:
            combo.blockSignals(wasBlocked)
        self._cardCache = {}
        self._showModelChoice()

    def _showModelChoice(self) -> None:
        if not self._parameterNode:
            return
        combo = self.ui.modelComboBox
        index = combo.findData(self._parameterNode.model)
        wasBlocked = combo.blockSignals(True)
        combo.currentIndex = max(index, 0)
        combo.blockSignals(wasBlocked)

    def onModelSelected(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index) or "auto"

    def _resolvedCard(self):
        """The card a run would use now (cached per input image and model), or None."""
        if not self._parameterNode or not slicer_logic.torch_available():
            return None
        node, model = self._parameterNode.inputVolume, self._parameterNode.model
        imageData = node.GetImageData() if node else None
        key = (node.GetID() if node else None, imageData.GetMTime() if imageData else None, model)
        if key not in self._cardCache:
            try:
                self._cardCache[key] = slicer_logic.card_for_volume(node, model)
            except Exception as error:  # noqa: BLE001 - shown in the model line, not raised from an observer
                self._cardCache[key] = error if isinstance(error, VerdiffError) else VerdiffError(f"{type(error).__name__}: {error}")
        return self._cardCache[key]

    def _updateModelInfo(self) -> None:
        card = self._resolvedCard()
        if card is None:
            self.ui.modelInfoLabel.text = "" if slicer_logic.torch_available() else _("Models are listed once PyTorch is installed.")
            return
        if isinstance(card, VerdiffError):
            self.ui.modelInfoLabel.text = str(card)
            return
        prefix = _("auto picks {name}").format(name=card.name) if self._parameterNode.model == "auto" else card.name
        labels = "; ".join(f"{label['name']}: {label.get('covers', '')}" for label in card.labels)
        sampled = slicer_logic.samples(card)
        for widget in (self.ui.stepsSpinBox, self.ui.ensembleSpinBox):
            widget.enabled = sampled and self._job is None
        if sampled:  # the card's real ranges (a Verdiff-Net card sampling from t=150 takes 1-151 steps)
            (fewest, most), (smallest, largest) = card.steps_range(), card.ensemble_range()
            self.ui.stepsSpinBox.setRange(fewest, most)
            self.ui.ensembleSpinBox.setRange(smallest, largest)
            self.ui.stepsSpinBox.toolTip = _("Reverse-diffusion steps per sample ({fewest}-{most} for this model).").format(fewest=fewest, most=most)
        template = (
            _("{prefix} (v{version}, {family}, {modality}). {labels}. Defaults: {steps} steps (accepts {fewest}-{most}), ensemble of {ensemble}.")
            if sampled
            else _("{prefix} (v{version}, {family}, {modality}). {labels}. Deterministic: one pass, no sampling steps, no uncertainty.")
        )
        self.ui.modelInfoLabel.text = template.format(
            prefix=prefix,
            version=card.version,
            family=card.family_name,
            modality=card.modality,
            labels=labels,
            steps=card.default_steps,
            ensemble=card.default_ensemble,
            fewest=card.steps_range()[0] if sampled else 0,
            most=card.steps_range()[1] if sampled else 0,
        )
        if card.name != self._parameterNode.defaultsFromModel:
            # A different model: start from its defaults.
            self._parameterNode.defaultsFromModel = card.name
            self._parameterNode.steps = card.default_steps
            self._parameterNode.ensemble = card.default_ensemble

    def _updateDeviceInfo(self, refresh: bool = True) -> None:
        if refresh or self._deviceInfo is None:
            self._deviceInfo = slicer_logic.device_info()
        info = self._deviceInfo
        combo = self.ui.deviceComboBox
        if combo.count == 3:  # filled by the parameter node connector: auto, cpu, cuda
            combo.setItemText(0, _("auto"))
            combo.setItemText(1, _("CPU"))
            combo.setItemText(2, _("CUDA: {gpu}").format(gpu=info["gpu"]) if info["cuda"] else _("CUDA (no GPU found)"))
        if info["torch"] is None:
            self.ui.deviceInfoLabel.text = _("PyTorch is not installed yet.")
            return
        choice = self._parameterNode.device if self._parameterNode else "auto"
        device, warning = slicer_logic.choose_device(choice)
        if warning:
            self.ui.deviceInfoLabel.text = "\u26a0 " + warning
        elif device == "cuda":
            self.ui.deviceInfoLabel.text = _("Runs on the GPU: {gpu} (PyTorch {torch}).").format(gpu=info["gpu"], torch=info["torch"])
        else:
            self.ui.deviceInfoLabel.text = _("Runs on the CPU (PyTorch {torch}).").format(torch=info["torch"])

    def _updateDependencies(self) -> None:
        missing = self.logic.missingDependencies()
        self.ui.dependenciesCollapsibleButton.visible = bool(missing)
        if missing:
            self.ui.dependenciesLabel.text = _("Missing Python packages: {packages}. They are installed when you press the button below or run a segmentation.").format(
                packages=", ".join(missing)
            )

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to install the dependencies."), waitCursor=True):
            self.logic.installDependencies(askConfirmation=True)
        self._afterDependenciesChanged()

    def _afterDependenciesChanged(self) -> None:
        importlib.invalidate_caches()
        self._updateDependencies()
        self._populateModels()
        self._updateDeviceInfo()
        self._onParameterNodeModified()

    # ------------------------------------------------------------------ running

    def onApplyButton(self) -> None:
        """Start a segmentation, or cancel the running one."""
        if self._job is not None:
            self._job.cancel()
            self.ui.applyButton.text = _("Cancelling...")
            self.ui.applyButton.enabled = False
            self.ui.statusLabel.text = _("Cancelling after the current batch of slices...")
            return
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        if volumeNode is None:
            return
        if self.logic.missingDependencies():
            try:
                installed = self.logic.installDependencies(askConfirmation=True)
            except Exception as error:  # noqa: BLE001 - shown to the user
                self._showError(error)
                installed = False
            self._afterDependenciesChanged()
            if not installed:
                return
        try:
            image = slicer_logic.read_input(volumeNode)
            device, warning = slicer_logic.choose_device(self._parameterNode.device)
        except Exception as error:  # noqa: BLE001 - shown to the user
            self.ui.statusLabel.text = _("Failed: {error}").format(error=error)
            self._showError(error)
            return
        if warning:
            logging.warning(warning)
        settings = {
            "model": self._parameterNode.model,
            "steps": self._parameterNode.steps,
            "ensemble": self._parameterNode.ensemble,
            "seed": self._parameterNode.seed,
            "device": device,
            # small batches on the CPU so that Cancel answers within seconds
            "batch_size": 8 if device == "cuda" else 2,
        }
        self._job = slicer_logic.BackgroundJob(image, **settings)
        self._jobInput = volumeNode
        self._job.start()
        self._setRunning(True, warning)
        self._pollTimer.start()

    def _setRunning(self, running: bool, warning: Optional[str] = None) -> None:
        for widget in (self.ui.inputVolumeSelector, self.ui.modelComboBox, self.ui.stepsSpinBox, self.ui.ensembleSpinBox, self.ui.seedSpinBox, self.ui.deviceComboBox):
            widget.enabled = not running
        if not running:
            self._updateModelInfo()  # re-applies what the chosen model allows (steps, ensemble)
        self.ui.applyButton.text = _("Cancel") if running else _("Segment vertebrae")
        self.ui.applyButton.toolTip = _("Stop the segmentation; the scene stays as it was.") if running else _("Segment the vertebrae of the input volume.")
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.setRange(0, 0)
            self.ui.progressBar.format = _("Starting...")
            self.ui.statusLabel.text = ("\u26a0 " + warning) if warning else ""
        self._updateApplyButton()

    def _onPoll(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        time.sleep(GIL_YIELD_SECONDS)  # let the worker thread run (see GIL_YIELD_SECONDS)
        stage, done, total = job.progress
        bar = self.ui.progressBar
        if stage == "inference" and total:
            bar.setRange(0, total)
            bar.value = done
            bar.format = _("Sampling: %v of %m slices")
        else:
            bar.setRange(0, 0)  # busy indicator
            bar.format = {
                "starting": _("Starting..."),
                "loading": _("Loading the model..."),
                "finishing": _("Mapping the results back onto the input..."),
            }.get(stage, stage)
        if job.finished:
            self._pollTimer.stop()
            self._finish(job)

    def _finish(self, job) -> None:
        self._job = None
        self._setRunning(False)
        if job.outcome == "cancelled" or job.cancel_requested:
            self.ui.statusLabel.text = _("Cancelled: the scene was not changed.")
            return
        if job.outcome == "failed":
            self.ui.statusLabel.text = _("Failed: {error}").format(error=job.error)
            self._showError(job.error, job.error_traceback)
            return
        volumeNode, self._jobInput = self._jobInput, None  # apply_result refuses it if it left the scene
        self.ui.statusLabel.text = _("Adding the results to the scene...")
        slicer.app.processEvents()
        try:
            outputs = self.logic.applyResult(volumeNode, job.computation)
        except Exception as error:  # noqa: BLE001 - shown to the user; the scene was rolled back
            import traceback

            self.ui.statusLabel.text = _("Failed: {error}").format(error=error)
            self._showError(error, traceback.format_exc())
            return
        showUncertainty = self._parameterNode.showUncertainty if self._parameterNode else True
        self.logic.showResults(volumeNode, outputs, showUncertainty)
        settings = job.computation.result.settings
        status = _("Done in {seconds:.1f} s with {model} on {device} ({steps} steps, ensemble of {ensemble}): {segmentation}, {uncertainty}, {table}.").format(
            seconds=job.seconds or 0.0,
            model=settings["model"],
            device=settings["device"],
            steps=settings["steps"],
            ensemble=settings["ensemble"],
            segmentation=outputs.segmentation.GetName(),
            uncertainty=outputs.uncertainty.GetName(),
            table=outputs.statistics.GetName(),
        )
        cobb = job.computation.result.measurements.get("cobb_angles_deg")
        if cobb:
            status += "\n" + _("Cobb angles (AASCE PT, MT, TL/L): {pt:.1f}\u00b0, {mt:.1f}\u00b0, {tl:.1f}\u00b0").format(pt=cobb["PT"], mt=cobb["MT"], tl=cobb["TL"])
        if job.computation.device_warning:
            status += "\n\u26a0 " + job.computation.device_warning
        for warning in settings.get("reliability", {}).get("warnings", []):  # the run's own doubt (reliability.py)
            status += "\n\u26a0 " + _("Check this result: {warning}").format(warning=warning)
        self.ui.statusLabel.text = status

    def _showError(self, error, details: str = "") -> None:
        if isinstance(error, VerdiffError):
            slicer.util.errorDisplay(str(error), windowTitle=_("Verdiff Segment"))
        else:
            logging.error(details or repr(error))
            slicer.util.errorDisplay(
                _("Segmentation failed: {error}").format(error=f"{type(error).__name__}: {error}"),
                windowTitle=_("Verdiff Segment"),
                detailedText=details,
            )


#
# VerdiffSegmentLogic
#


class VerdiffSegmentLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: the parameter node, dependencies, and the calls into the
    Qt-free ``slicer_logic`` with ``slicer.mrmlScene``. Usable from Python scripts:

        logic = slicer.util.getModuleLogic("VerdiffSegment")
        outputs = logic.process(volumeNode, steps=5, ensemble=3)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return VerdiffSegmentParameterNode(super().getParameterNode())

    # dependencies

    @staticmethod
    def missingDependencies() -> list:
        missing = []
        if importlib.util.find_spec("torch") is None:
            missing.append("torch")
        missing += [requirement for module, requirement in PIP_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
        return missing

    def installDependencies(self, askConfirmation: bool = True) -> bool:
        """Install what is missing, as SlicerTotalSegmentator and SlicerNNUnet do: PyTorch
        through the PyTorch extension's PyTorchUtils (it picks the CUDA build that fits the
        GPU), the rest through pip. True when everything is there afterwards."""
        missing = self.missingDependencies()
        if not missing:
            return True
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise VerdiffError(
                    _("Verdiff Segment needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, restart Slicer and try again.")
                ) from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
                if torch is None:
                    return False
        rest = [requirement for requirement in missing if requirement != "torch"]
        if rest:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("Verdiff Segment will install these Python packages: {packages}").format(packages=", ".join(rest))
            ):
                return False
            slicer.util.pip_install(rest)
        importlib.invalidate_caches()
        return not self.missingDependencies()

    # work

    def process(self, volumeNode, **settings):
        """Segment ``volumeNode`` synchronously (scripts); returns the output nodes."""
        return slicer_logic.run(slicer.mrmlScene, volumeNode, **settings)

    def applyResult(self, volumeNode, computation):
        return slicer_logic.apply_result(slicer.mrmlScene, volumeNode, computation)

    @staticmethod
    def showResults(volumeNode, outputs, showUncertainty: bool = True) -> None:
        """Input as background, the uncertainty as semi-transparent foreground."""
        if showUncertainty:
            slicer.util.setSliceViewerLayers(background=volumeNode, foreground=outputs.uncertainty, foregroundOpacity=0.5)
        else:
            slicer.util.setSliceViewerLayers(background=volumeNode)
        display = outputs.segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility(True)
        # The per-vertebra table beside the views (a layout with a table view, then select it there).
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and outputs.statistics is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(outputs.statistics.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


#
# VerdiffSegmentTest
#


class VerdiffSegmentTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (``Slicer --testing``, or the Reload and Test button) the same test
    bodies as the headless pytest suite (``VerdiffSegmentLib/testing.py``), on
    ``slicer.mrmlScene``, plus a run through the GUI. Uses the development data when it
    is found (``$VERDIFF_DATA_DIR`` or ``shared/data`` beside the checkout), else a
    synthetic volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LogicOnVolume()
        self.setUp()
        self.test_LogicOnXray()
        self.setUp()
        self.test_Widget()

    def _source(self):
        from VerdiffSegmentLib import testing

        dataDir = testing.find_data_dir()
        if dataDir is not None:
            return testing.mr_image(dataDir, 24), testing.MR_CASE, "verdiff-mr"
        logging.warning("VerdiffSegmentTest: development data not found; using a synthetic volume")
        return testing.synthetic_image(), "synthetic", None

    def test_LogicOnVolume(self):
        from VerdiffSegmentLib import testing

        self.delayDisplay("Segment a volume, check every output, then cancel, errors and roll-back")
        scene = slicer.mrmlScene
        source, name, model = self._source()
        volume = testing.add_volume(scene, source, name)
        testing.check_read_input_exact(volume, source)
        outputs, computation = testing.check_segment_volume(scene, volume, source, expected_model=model)
        testing.check_cancel_leaves_scene_unchanged(scene, volume)
        testing.check_errors_leave_scene_unchanged(scene, volume)
        testing.check_failed_apply_rolls_back(scene, volume, computation)
        testing.check_tampered_weights_leave_scene_unchanged(scene, volume, computation.card.name)
        testing.check_background_job(scene, volume)
        self.delayDisplay("Logic test passed")

    def test_LogicOnXray(self):
        from VerdiffSegmentLib import testing

        dataDir = testing.find_data_dir()
        if dataDir is None:
            self.delayDisplay("No development data: X-ray test skipped")
            return
        self.delayDisplay("Segment an X-ray loaded as a single-slice volume; run twice")
        scene = slicer.mrmlScene
        source = testing.xray_image(dataDir)
        volume = testing.add_volume(scene, source, "xray")
        testing.check_segment_volume(scene, volume, source, expected_model="verdiff-xray")
        other = testing.add_volume(scene, source, "xray copy")
        testing.check_second_run_replaces(scene, volume, other_volume_node=other)
        self.delayDisplay("X-ray test passed")

    def _waitForJob(self, widget, timeoutSeconds=600):
        start = time.time()
        while widget._job is not None:
            slicer.app.processEvents()
            time.sleep(0.01)
            self.assertLess(time.time() - start, timeoutSeconds, "the segmentation did not finish in time")

    def test_Widget(self):
        """The button starts a run off the main thread and turns into Cancel; results land
        in the scene; a cancelled run leaves the scene as it was."""
        from VerdiffSegmentLib import testing

        self.delayDisplay("Run through the GUI")
        widget = slicer.modules.verdiffsegment.widgetRepresentation().self()
        scene = slicer.mrmlScene
        source, name, _model = self._source()
        volume = testing.add_volume(scene, source, name)
        widget.initializeParameterNode()
        parameters = widget._parameterNode
        parameters.inputVolume = volume
        parameters.device = "cpu"
        parameters.steps = 2
        parameters.ensemble = 2
        self.assertEqual(widget.ui.applyButton.text, _("Segment vertebrae"))
        widget.ui.applyButton.click()
        self.assertEqual(widget.ui.applyButton.text, _("Cancel"))
        self._waitForJob(widget)
        self.assertEqual(widget.ui.applyButton.text, _("Segment vertebrae"))
        found = slicer_logic.find_outputs(scene, volume)
        self.assertTrue(all(len(nodes) == 1 for nodes in found.values()), f"outputs after a GUI run: {found}")

        before = testing.snapshot(scene)
        widget.ui.applyButton.click()
        widget.ui.applyButton.click()  # Cancel
        self._waitForJob(widget)
        testing.check_unchanged(before, testing.snapshot(scene), compare_mtime=False)
        self.assertEqual(widget.ui.statusLabel.text, _("Cancelled: the scene was not changed."))
        self.delayDisplay("Widget test passed")
