"""3D Slicer module "Verdiff Segment": vertebrae and vertebral bodies with a diffusion model,
and a per-voxel uncertainty volume. The only file of the extension that imports Qt, CTK or
``slicer.app``, and only GUI glue: the .ui, the parameter node, ``verdiff segment`` run with
``qt.QProcess``; the rest (the input written, the command, the progress read, the outputs put
into the scene) is the Qt-free ``VerdiffSegmentLib.slicer_bound.slicer_logic``, tested headless.
"""

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
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from VerdiffSegmentLib.errors import VerdiffError
from VerdiffSegmentLib.process import TERMINATE_GRACE_SECONDS
from VerdiffSegmentLib.settings import ENSEMBLE_LIMITS, SEED_LIMITS, STEPS_LIMITS, SegmentSettings
from VerdiffSegmentLib.slicer_bound import dependencies, slicer_logic


def resourcePath(relativePath: str) -> str:
    """A file of ``Resources/``: beside the module when installed (CMake copies it), one folder up in the source tree."""
    moduleDir = os.path.dirname(os.path.abspath(__file__))
    for base in (moduleDir, os.path.dirname(moduleDir)):
        candidate = os.path.join(base, "Resources", relativePath)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(moduleDir, "Resources", relativePath)


class VerdiffSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Verdiff Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["VerdiffSegment contributors"]
        self.parent.helpText = _(
            "Segments the vertebrae (CT) or vertebral bodies (MR, X-ray) of a spine image with a diffusion model (Verdiff-Net) and shows where the model is unsure: an ensemble of samples "
            "gives the segmentation (their mean) and an uncertainty volume (their spread). Select the input volume and press <b>Segment vertebrae</b>. See the extension's documentation (docs/slicer.md) for how to read the uncertainty."
        )
        self.parent.acknowledgementText = _("The bundled models were trained on public data sets named in their model cards (Resources/Models/*.json); cite their authors. Verdiff-Net follows the paper cited in the README.")
        iconPath = resourcePath("Icons/VerdiffSegment.png")
        if os.path.exists(iconPath):
            self.parent.icon = qt.QIcon(iconPath)


@parameterNodeWrapper
class VerdiffSegmentParameterNode:
    """The settings, saved with the scene: a ``SegmentSettings`` (limits: the widest any model
    takes; the spin boxes narrow to the model's, ``for_card`` checks at the start) and what
    to show. defaultsFromModel: the model whose defaults were last applied to steps/ensemble."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = "auto"
    steps: Annotated[int, WithinRange(*STEPS_LIMITS)] = 5
    ensemble: Annotated[int, WithinRange(*ENSEMBLE_LIMITS)] = 3
    seed: Annotated[int, WithinRange(*SEED_LIMITS)] = 0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    showUncertainty: bool = True
    defaultsFromModel: str = ""


class VerdiffSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = self._deviceInfo = None
        self._process = self._job = None  # the running qt.QProcess and its slicer_logic.Job
        self._updatingGUI = self._cancelled = False
        self._startedAt = 0.0
        self._cards = slicer_logic.CardLookup()

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
        self.ui.progressBar.hide()
        self._afterDependenciesChanged()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._stopProcess(wait=True)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._stopProcess()  # results of a closed scene must not land in the next one
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
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            combo = self.ui.modelComboBox
            if self._parameterNode:
                wasBlocked = combo.blockSignals(True)
                combo.currentIndex = max(combo.findData(self._parameterNode.model), 0)
                combo.blockSignals(wasBlocked)
            self._updateModelInfo()
            self._updateDeviceInfo()
            running = self._process is not None
            hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
            self.ui.applyButton.enabled = (not self._cancelled) if running else hasInput
            if not running:
                self.ui.applyButton.toolTip = _("Segment the vertebrae of the input volume.") if hasInput else _("Select an input volume.")
        finally:
            self._updatingGUI = False

    def _populateModels(self) -> None:
        """Fill the model selector from the bundled cards; "auto" comes first."""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("auto (pick by modality)"), "auto")
        for card in slicer_logic.list_models():
            combo.addItem(slicer_logic.card_title(card), card.name)
            combo.setItemData(combo.count - 1, card.summary(), qt.Qt.ToolTipRole)
        combo.blockSignals(wasBlocked)
        self._cards = slicer_logic.CardLookup()

    def onModelSelected(self, index) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index) or "auto"

    def _updateModelInfo(self) -> None:
        """The chosen model in words, its real steps and ensemble ranges on the spin boxes,
        and its defaults applied when the model changes."""
        if not self._parameterNode or not slicer_logic.torch_available():
            self.ui.modelInfoLabel.text = _("Models are listed once PyTorch is installed.") if self._parameterNode else ""
            return
        model = self._parameterNode.model
        card = self._cards(self._parameterNode.inputVolume, model)
        if not card or isinstance(card, VerdiffError):
            self.ui.modelInfoLabel.text = str(card or "")
            return
        info = slicer_logic.card_info(card)
        for widget in (self.ui.stepsSpinBox, self.ui.ensembleSpinBox):
            widget.enabled = info["samples"] and self._process is None
        if info["samples"]:
            self.ui.stepsSpinBox.setRange(*info["steps_range"])
            self.ui.ensembleSpinBox.setRange(*info["ensemble_range"])
            self.ui.stepsSpinBox.toolTip = _("Reverse-diffusion steps per sample ({fewest}-{most} for this model).").format(fewest=info["steps_range"][0], most=info["steps_range"][1])
            template = _("{prefix} (v{version}, {family}, {modality}). {labels}. Defaults: {steps} steps (accepts {fewest}-{most}), ensemble of {ensemble}.")
        else:
            template = _("{prefix} (v{version}, {family}, {modality}). {labels}. Deterministic: one pass, no sampling steps, no uncertainty.")
        prefix = _("auto picks {name}").format(name=card.name) if model == "auto" else card.name
        self.ui.modelInfoLabel.text = template.format(prefix=prefix, fewest=info["steps_range"][0], most=info["steps_range"][1], **info)
        if card.name != self._parameterNode.defaultsFromModel:  # a different model: start from its defaults
            self._parameterNode.defaultsFromModel = card.name
            self._parameterNode.steps, self._parameterNode.ensemble = card.default_steps, card.default_ensemble

    def _updateDeviceInfo(self) -> None:
        info = self._deviceInfo = self._deviceInfo or slicer_logic.device_info()
        if self.ui.deviceComboBox.count == 3:  # filled by the parameter node connector: auto, cpu, cuda
            for index, text in enumerate((_("auto"), _("CPU"), _("CUDA: {gpu}").format(gpu=info["gpu"]) if info["cuda"] else _("CUDA (no GPU found)"))):
                self.ui.deviceComboBox.setItemText(index, text)
        device, warning = slicer_logic.choose_device(self._parameterNode.device if self._parameterNode else "auto") if info["torch"] else (None, None)
        if info["torch"] is None:
            text = _("PyTorch is not installed yet.")
        elif warning:
            text = "\u26a0 " + warning
        else:
            text = (_("Runs on the GPU: {gpu} (PyTorch {torch}).") if device == "cuda" else _("Runs on the CPU (PyTorch {torch}).")).format(**info)
        self.ui.deviceInfoLabel.text = text

    def onInstallDependencies(self) -> bool:
        with slicer.util.tryWithErrorDisplay(_("Failed to install the dependencies."), waitCursor=True):
            self.logic.installDependencies(askConfirmation=True)
        self._afterDependenciesChanged()
        return not dependencies.missing()

    def _afterDependenciesChanged(self) -> None:
        missing = dependencies.missing()
        self.ui.dependenciesCollapsibleButton.visible = bool(missing)
        self.ui.dependenciesLabel.text = _("Missing Python packages: {packages}. They are installed when you press the button below or run a segmentation.").format(packages=", ".join(missing))
        self._deviceInfo = None
        self._populateModels()
        self._onParameterNodeModified()

    def onApplyButton(self) -> None:
        """Start a segmentation process, or cancel the running one."""
        if self._process is not None:
            self._stopProcess()
            return
        volumeNode = self._parameterNode.inputVolume if self._parameterNode else None
        if volumeNode is None or (dependencies.missing() and not self.onInstallDependencies()):
            return
        try:
            settings, warning = self.logic.settingsFrom(self._parameterNode)
            self._job = slicer_logic.Job(volumeNode, settings)  # writes the input for the process
        except Exception as error:  # noqa: BLE001 - shown to the user
            self._showError(error)
            return
        command = self._job.command
        environment = qt.QProcessEnvironment.systemEnvironment()
        for name, value in command.environment.items():
            environment.insert(name, value)
        self._process = qt.QProcess()
        self._process.setProcessEnvironment(environment)
        self._process.connect("readyReadStandardError()", self._onProcessOutput)
        self._process.connect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
        self._process.connect("errorOccurred(QProcess::ProcessError)", self._onProcessError)
        self._cancelled, self._startedAt = False, time.perf_counter()
        self._setRunning(True, warning)
        self._process.start(command.program, command.arguments)

    def _stopProcess(self, wait: bool = False) -> None:
        """Cancel: terminate the process, and kill it if it is still there after the grace time."""
        process = self._process
        if process is None or self._cancelled:
            return
        self._cancelled = True
        self.ui.applyButton.text = _("Cancelling...")
        self.ui.applyButton.enabled = False
        process.terminate()
        graceMs = int(TERMINATE_GRACE_SECONDS * 1000)
        if wait and not process.waitForFinished(graceMs):
            process.kill()
        qt.QTimer.singleShot(graceMs, lambda: process.state() != qt.QProcess.NotRunning and process.kill())

    def _setRunning(self, running: bool, warning: Optional[str] = None) -> None:
        for widget in (self.ui.inputVolumeSelector, self.ui.modelComboBox, self.ui.stepsSpinBox, self.ui.ensembleSpinBox, self.ui.seedSpinBox, self.ui.deviceComboBox):
            widget.enabled = not running
        self.ui.applyButton.text = _("Cancel") if running else _("Segment vertebrae")
        self.ui.applyButton.toolTip = _("Stop the segmentation; the scene stays as it was.") if running else _("Segment the vertebrae of the input volume.")
        self.ui.progressBar.visible = running
        if running:
            self._showProgress("read", 0, 0)
            self.ui.statusLabel.text = ("\u26a0 " + warning) if warning else ""
        self._onParameterNodeModified()  # re-applies what the chosen model allows

    def _onProcessOutput(self) -> None:
        if self._process is None:  # a late signal of a process already let go
            return
        text = bytes(self._process.readAllStandardError().data()).decode("utf-8", "replace")
        for stage, done, total in self._job.output.feed_stderr(text):
            self._showProgress(stage, done, total)

    def _showProgress(self, stage: str, done: int, total: int) -> None:
        bar = self.ui.progressBar
        if stage == "inference" and total:
            bar.setRange(0, total)
            bar.value = done
            bar.format = _("Sampling: %v of %m slices")
            return
        bar.setRange(0, 0)  # busy indicator
        words = {"read": _("Reading the input..."), "load_model": _("Loading the model..."), "preprocess": _("Preparing the slices..."), "inference": _("Sampling...")}
        words.update(postprocess=_("Mapping the results back onto the input..."), write=_("Writing the results..."))
        bar.format = words.get(stage, stage)

    def _onProcessError(self, error) -> None:
        if error == qt.QProcess.FailedToStart:  # no "finished" follows
            self._job.output.error = _("could not start {program}").format(program=self._job.command.program)
            self._onProcessFinished(None, qt.QProcess.CrashExit)

    def _onProcessFinished(self, exitCode, exitStatus) -> None:
        process, job, self._process, self._job = self._process, self._job, None, None
        if process is None:
            return
        stdout = bytes(process.readAllStandardOutput().data()).decode("utf-8", "replace")
        job.output.feed_stderr(bytes(process.readAllStandardError().data()).decode("utf-8", "replace"))  # its last words
        cancelled, self._cancelled = self._cancelled, False
        self._setRunning(False)
        if cancelled:
            job.close()
            self.ui.statusLabel.text = _("Cancelled: the scene was not changed.")
            return
        volumeNode = job.volume_node
        try:
            computation = job.finish(None if exitStatus == qt.QProcess.CrashExit else exitCode, stdout)
            self.ui.statusLabel.text = _("Adding the results to the scene...")
            slicer.app.processEvents()
            outputs = slicer_logic.apply_result(slicer.mrmlScene, volumeNode, computation)
        except Exception as error:  # noqa: BLE001 - shown to the user; the scene is as it was
            self.ui.statusLabel.text = _("Failed: {error}").format(error=error)
            self._showError(error)
            return
        self.logic.showResults(volumeNode, outputs, self._parameterNode.showUncertainty if self._parameterNode else True)
        self.ui.statusLabel.text = self.logic.statusText(computation, outputs, time.perf_counter() - self._startedAt)

    def _showError(self, error) -> None:
        if not isinstance(error, VerdiffError):  # a bug: its traceback goes to the log
            logging.exception("Verdiff Segment")
        text = str(error) if isinstance(error, VerdiffError) else _("Segmentation failed: {error}").format(error=f"{type(error).__name__}: {error}")
        slicer.util.errorDisplay(text, windowTitle=_("Verdiff Segment"))


class VerdiffSegmentLogic(ScriptedLoadableModuleLogic):
    """The parameter node, dependencies and calls into the Qt-free ``slicer_logic`` with ``slicer.mrmlScene``.
    From a script: ``slicer.util.getModuleLogic("VerdiffSegment").process(volumeNode, SegmentSettings(steps=5))``."""

    def getParameterNode(self):
        return VerdiffSegmentParameterNode(super().getParameterNode())

    @staticmethod
    def installDependencies(askConfirmation: bool = True) -> bool:
        """PyTorch through the PyTorch extension, the rest through pip (``slicer_bound.dependencies``)."""
        confirm = lambda packages: slicer.util.confirmOkCancelDisplay(_("Verdiff Segment will install these Python packages: {packages}").format(packages=", ".join(packages)))  # noqa: E731
        try:
            return dependencies.install(confirm, askConfirmation)
        except dependencies.NoPyTorchExtension:
            raise VerdiffError(_("Verdiff Segment needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, restart Slicer and try again.")) from None

    @staticmethod
    def settingsFrom(parameterNode) -> tuple:
        """The request of the parameter node, and a warning when CUDA was asked for but is absent."""
        device, warning = slicer_logic.choose_device(parameterNode.device)
        settings = SegmentSettings(model=parameterNode.model, steps=parameterNode.steps, ensemble=parameterNode.ensemble, device=device, seed=parameterNode.seed)
        return settings, warning

    def process(self, volumeNode, settings: SegmentSettings = SegmentSettings()):
        """Segment ``volumeNode`` synchronously (scripts; the process still runs apart)."""
        return slicer_logic.run(slicer.mrmlScene, volumeNode, settings)

    @staticmethod
    def statusText(computation, outputs, seconds: float) -> str:
        settings = computation.settings
        names = {role: node.GetName() for role, node in zip(("segmentation", "uncertainty", "table"), outputs.nodes())}
        status = _("Done in {seconds:.1f} s with {model} on {device} ({steps} steps, ensemble of {ensemble}): {segmentation}, {uncertainty}, {table}.").format(seconds=seconds, **settings, **names)
        cobb = computation.measurements.get("cobb_angles_deg")
        if cobb:  # an angle the segmentation could not determine reads "n/d"; a warning says why
            status += "\n" + _("Cobb angles (AASCE PT, MT, TL/L): {PT}, {MT}, {TL}").format(**slicer_logic.cobb_angle_texts(cobb))
        if computation.measurements.get("vertebrae_left_out"):  # named beyond the model's levels (a C7 on an X-ray): not segmented
            status += "\n" + _("Left out, beyond the levels the model segments: {names}").format(names=", ".join(v["name"] for v in computation.measurements["vertebrae_left_out"]))
        for warning in computation.warnings:  # the input's modality and the run's own doubt (reliability.py)
            status += "\n\u26a0 " + _("Check this result: {warning}").format(warning=warning)
        return status

    @staticmethod
    def showResults(volumeNode, outputs, showUncertainty: bool = True) -> None:
        """Input as background, the uncertainty as semi-transparent foreground, the table beside."""
        if showUncertainty:
            slicer.util.setSliceViewerLayers(background=volumeNode, foreground=outputs.uncertainty, foregroundOpacity=0.5)
        else:
            slicer.util.setSliceViewerLayers(background=volumeNode)
        display = outputs.segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility(True)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and outputs.statistics is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(outputs.statistics.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


class VerdiffSegmentTest(ScriptedLoadableModuleTest):
    """In Slicer (``Slicer --testing``, Reload and Test): the headless suite's test bodies (``slicer_bound/testing.py``) on
    ``slicer.mrmlScene`` with PythonSlicer processes, and a GUI run; development data when found, else a synthetic volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_Logic, self.test_Widget):
            self.setUp()
            test()

    def test_Logic(self):
        from VerdiffSegmentLib.slicer_bound import testing

        dataDir = testing.find_data_dir()
        if dataDir is None:
            logging.warning("VerdiffSegmentTest: development data not found; using a synthetic volume")
        self.delayDisplay("Segment a volume (and an X-ray), check every output, cancel, errors, roll-back, the process job")
        testing.check_module_logic(slicer.mrmlScene, dataDir)
        self.delayDisplay("Logic test passed")

    def test_Widget(self):
        """The button starts the process and turns into Cancel; results land in the scene; Cancel leaves it as it was."""
        from VerdiffSegmentLib.slicer_bound import testing

        self.delayDisplay("Run through the GUI")
        widget = slicer.modules.verdiffsegment.widgetRepresentation().self()
        source, name, _model = testing.module_test_source(testing.find_data_dir())
        volume = testing.add_volume(slicer.mrmlScene, source, name)
        widget.initializeParameterNode()
        parameters = widget._parameterNode
        parameters.inputVolume, parameters.device, parameters.steps, parameters.ensemble = volume, "cpu", 2, 2
        self.assertEqual(widget.ui.applyButton.text, _("Segment vertebrae"))
        widget.ui.applyButton.click()
        self.assertEqual(widget.ui.applyButton.text, _("Cancel"))
        self._waitForProcess(widget)
        self.assertEqual(widget.ui.applyButton.text, _("Segment vertebrae"))
        found = slicer_logic.find_outputs(slicer.mrmlScene, volume)
        self.assertTrue(all(len(nodes) == 1 for nodes in found.values()), f"outputs after a GUI run: {found}")
        before = testing.snapshot(slicer.mrmlScene)
        widget.ui.applyButton.click()
        widget.ui.applyButton.click()  # Cancel
        self._waitForProcess(widget)
        testing.check_unchanged(before, testing.snapshot(slicer.mrmlScene), compare_mtime=False)
        self.assertEqual(widget.ui.statusLabel.text, _("Cancelled: the scene was not changed."))
        self.delayDisplay("Widget test passed")

    def _waitForProcess(self, widget, timeoutSeconds=600):
        start = time.time()
        while widget._process is not None:
            slicer.app.processEvents()
            time.sleep(0.01)
            self.assertLess(time.time() - start, timeoutSeconds, "the segmentation did not finish in time")
