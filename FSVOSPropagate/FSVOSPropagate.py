"""FSVOSPropagate: paint one frame of an X-ray angiography cine, propagate to every frame, review, correct, export.

The widget is thin: everything it does goes through FSVOSPropagateLib (no Qt there), which the tests run on
slicer-core and the self-test below runs inside Slicer.
"""

import logging
import os
import sys
import tempfile
from typing import Annotated, Optional

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if _MODULE_DIR not in sys.path:  # the engine (fsvos) and FSVOSPropagateLib live next to this file
    sys.path.insert(0, _MODULE_DIR)

from FSVOSPropagateLib import scene as fsvos_scene  # noqa: E402
from FSVOSPropagateLib.logic import FSVOSPropagateLogic as _Logic  # noqa: E402
from FSVOSPropagateLib.runner import CANCELLED, DONE, RUNNING, EngineSettings  # noqa: E402

SAMPLE_NAME = "FSVOSSyntheticXA"


#
# Module
#


class FSVOSPropagate(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "FSVOS Propagate"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Sequences", "Segmentations"]
        self.parent.contributors = ["The FSVOSPropagate developers"]
        self.parent.helpText = (
            "Paint one (or a few) frames of an X-ray angiography cine with the Segment Editor, click Propagate: "
            "every frame is segmented by few-shot video object segmentation (local matching). Review the least "
            "certain frames, correct any frame and propagate again (corrected frames become extra supports), "
            "export a DICOM Segmentation of every frame. "
            "<a href='https://github.com/fsvospropagate/FSVOSPropagate#3d-slicer-module'>Documentation</a>.")
        self.parent.acknowledgementText = (
            "Method: Few-Shot Video Object Segmentation in X-Ray Angiography Using Local Matching and "
            "Spatio-Temporal Consistency Loss (XRAVOS), building on STCN.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """A synthetic XA cine (made on the spot, nothing downloaded) in the Sample Data module."""
    try:
        import SampleData
    except ImportError:
        return
    icon = os.path.join(_MODULE_DIR, "Resources", "Icons", "FSVOSPropagate.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="FSVOSPropagate", sampleName=SAMPLE_NAME, uris=[], fileNames=[], nodeNames=[], checksums=[],
        loadFiles=[], loadFileType=[], thumbnailFileName=icon, customDownloader=lambda *args: loadSampleCine())


def loadSampleCine(seed: int = 11, size: int = 256, n_frames: int = 30):
    """Write a synthetic XA cine as DICOM, add it to the DICOM database, load it as Slicer's DICOM loader does,
    and paint its support frame into a segmentation sequence.  Returns (browser, segmentation)."""
    from fsvos.io import seg_codes
    from fsvos.synth import generate_case, write_case

    folder = tempfile.mkdtemp(prefix="fsvos-sample-")
    case = generate_case(seed, size=size, n_frames=n_frames)
    write_case(case, os.path.join(folder, "case"), replace=True)
    dicom_file = os.path.join(folder, "case", "cine.dcm")
    browser = None
    try:
        from DICOMLib import DICOMUtils

        dicom_folder = os.path.join(folder, "dicom")
        os.makedirs(dicom_folder)
        os.replace(dicom_file, os.path.join(dicom_folder, "cine.dcm"))
        dicom_file = os.path.join(dicom_folder, "cine.dcm")
        import pydicom

        series = str(pydicom.dcmread(dicom_file, stop_before_pixels=True).SeriesInstanceUID)
        DICOMUtils.importDicom(dicom_folder)
        DICOMUtils.loadSeriesByUID([series])
        browsers = slicer.util.getNodesByClass("vtkMRMLSequenceBrowserNode")
        browser = browsers[-1] if browsers else None
    except Exception as exc:  # no DICOM database: build the same nodes directly
        logging.warning(f"FSVOSPropagate sample: DICOM database not used ({exc})")
    ctx = fsvos_scene.SceneContext.from_slicer()
    if browser is None:
        from FSVOSPropagateLib.testing import load_xa_like_slicer

        browser, _uid = load_xa_like_slicer(ctx, dicom_file, "Synthetic XA cine")
    cine = fsvos_scene.read_cine(ctx, browser)
    segments = [(o["name"], tuple(c / 255.0 for c in seg_codes.default_color(o["category"], k)),
                 seg_codes.slicer_terminology(o["category"])) for k, o in enumerate(case.objects)]
    seg = fsvos_scene.create_segmentation_sequence(ctx, cine, "Sample segmentation", segments)
    ids = [seg.GetSegmentation().GetNthSegmentID(k) for k in range(len(case.objects))]
    fsvos_scene.paint_frame(ctx, cine, seg, case.support_frame, case.labels[case.support_frame], ids)
    return browser, seg


#
# Parameter node
#


@parameterNodeWrapper
class FSVOSPropagateParameterNode:
    """The module's state in the scene."""

    cine: slicer.vtkMRMLNode  # sequence browser (XA cine from DICOM) or 3D volume (K = time)
    segmentation: slicer.vtkMRMLSegmentationNode
    weightsPath: str = ""  # empty: bundled default
    window: Annotated[int, WithinRange(3, 99)] = 15
    reference: Annotated[str, Choice(["similarity", "fixed"])] = "similarity"
    memEvery: Annotated[int, WithinRange(1, 100)] = 6
    precision: Annotated[str, Choice(["auto", "fp32", "bf16"])] = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    workSize: Annotated[str, Choice(["auto", "native", "256", "384", "512", "768", "1024"])] = "auto"
    segGeometry: Annotated[str, Choice(["xa", "pseudo3d"])] = "xa"


#
# Widget
#


class FSVOSPropagateWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner = None
        self._job = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._poll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/FSVOSPropagate.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = FSVOSPropagateLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.createSegmentationButton.connect("clicked(bool)", self.onCreateSegmentation)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.exportSegButton.connect("clicked(bool)", self.onExportSeg)
        self.ui.exportNrrdButton.connect("clicked(bool)", self.onExportNrrd)
        self.ui.leastCertainList.connect("itemDoubleClicked(QListWidgetItem*)", self.onJumpToFrame)
        self.ui.jumpButton.connect("clicked(bool)", lambda: self.onJumpToFrame(self.ui.leastCertainList.currentItem()))
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._refreshSegmentList)
        self.ui.cineSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._updateButtons)
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setValue(0)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.onCancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.cine:
            browsers = slicer.util.getNodesByClass("vtkMRMLSequenceBrowserNode")
            if browsers:
                self._parameterNode.cine = browsers[0]

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self._refreshSegmentList()
        self._updateButtons()

    # -- helpers -----------------------------------------------------------------------------
    def _updateButtons(self, *args) -> None:
        running = self._runner is not None
        p = self._parameterNode
        ready = bool(p and p.cine and p.segmentation)
        self.ui.propagateButton.enabled = ready and not running
        self.ui.cancelButton.enabled = running
        self.ui.createSegmentationButton.enabled = bool(p and p.cine) and not running
        self.ui.undoButton.enabled = self.logic is not None and self.logic.core.last_record is not None and not running
        self.ui.exportSegButton.enabled = ready and not running
        self.ui.exportNrrdButton.enabled = ready and not running

    def _refreshSegmentList(self, *args) -> None:
        lst = self.ui.segmentList
        lst.clear()
        seg = self._parameterNode.segmentation if self._parameterNode else None
        if seg is None:
            return
        s = seg.GetSegmentation()
        for i in range(s.GetNumberOfSegments()):
            item = qt.QListWidgetItem(s.GetNthSegment(i).GetName())
            item.setData(qt.Qt.UserRole, s.GetNthSegmentID(i))
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked)
            lst.addItem(item)

    def _chosenSegments(self):
        lst = self.ui.segmentList
        if lst.count == 0:
            return None
        return [lst.item(i).data(qt.Qt.UserRole) for i in range(lst.count) if lst.item(i).checkState() == qt.Qt.Checked]

    def _status(self, text: str) -> None:
        self.ui.statusLabel.text = text
        slicer.app.processEvents()

    # -- actions -----------------------------------------------------------------------------
    def onCreateSegmentation(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not create the segmentation.", waitCursor=True):
            ctx = self.logic.core.ctx
            cine = fsvos_scene.read_cine(ctx, self._parameterNode.cine)
            if cine.kind == "sequence":
                seg = fsvos_scene.create_segmentation_sequence(ctx, cine, "FSVOS segmentation",
                                                               [("vessel", (0.85, 0.4, 0.31), "")])
            else:
                seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "FSVOS segmentation")
                seg.CreateDefaultDisplayNodes()
                seg.SetReferenceImageGeometryParameterFromVolumeNode(cine.volume)
                seg.GetSegmentation().AddEmptySegment("", "vessel", [0.85, 0.4, 0.31])
            self._parameterNode.segmentation = seg
            self._status("Paint the support frame(s) in the Segment Editor, then click Propagate.")
            slicer.util.selectModule("SegmentEditor") if self.ui.openEditorCheckBox.checked else None

    def onPropagate(self) -> None:
        from FSVOSPropagateLib.dependencies import ensure_dependencies

        if not ensure_dependencies(confirm=slicer.util.confirmOkCancelDisplay):
            self._status("Dependencies are missing; nothing was done.")
            return
        with slicer.util.tryWithErrorDisplay("Propagation could not start.", waitCursor=True):
            self.logic.configure(self._parameterNode)
            self._job = self.logic.core.prepare(self._parameterNode.cine, self._parameterNode.segmentation,
                                                self._chosenSegments())
            n = self._job.cine.n_frames
            self.ui.progressBar.setMaximum(max(1, n - len(self._job.support_frames)))
            self.ui.progressBar.setValue(0)
            self._runner = self.logic.core.start(self._job)
            self._status(f"Propagating from frame(s) {', '.join(map(str, self._job.support_frames))} ...")
            self._timer.start()
        self._updateButtons()

    def _poll(self) -> None:
        runner = self._runner
        if runner is None:
            self._timer.stop()
            return
        state = runner.poll()
        if runner.total:
            self.ui.progressBar.setMaximum(runner.total)
            self.ui.progressBar.setValue(runner.done)
        if state == RUNNING:
            return
        self._timer.stop()
        self._runner = None
        try:
            if state == DONE:
                with slicer.util.tryWithErrorDisplay("The result could not be applied.", waitCursor=True):
                    record = self.logic.core.apply(self._job, runner.raise_for_state())
                    self._showReview(record)
                    self._status(f"Done in {runner.result.seconds:.1f} s. Review the least certain frames; correct "
                                 "any frame and propagate again to use it as an extra support.")
            elif state == CANCELLED:
                self._status("Cancelled; the scene was not changed.")
            else:
                self._status("Failed; the scene was not changed.")
                slicer.util.errorDisplay(runner.error or "The engine failed.", detailedText=runner.stderr_text())
        finally:
            self._updateButtons()

    def onCancel(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            self._poll()

    def onUndo(self) -> None:
        with slicer.util.tryWithErrorDisplay("Undo failed.", waitCursor=True):
            self.logic.removeConfidencePlot()
            self.logic.core.undo()
            self.ui.leastCertainList.clear()
            self.ui.confidenceTableView.setMRMLTableNode(None)
            self._status("The last result was undone.")
        self._updateButtons()

    def _showReview(self, record) -> None:
        self.ui.confidenceTableView.setMRMLTableNode(record.table)
        lst = self.ui.leastCertainList
        lst.clear()
        for frame, conf in self.logic.core.least_certain_frames(10):
            item = qt.QListWidgetItem(f"frame {frame}: confidence {conf:.2f}")
            item.setData(qt.Qt.UserRole, frame)
            lst.addItem(item)
        if record.table is not None:
            self.logic.showConfidencePlot(record.table)

    def onJumpToFrame(self, item) -> None:
        if item is None or self.logic.core.last_job is None:
            return
        self.logic.core.jump_to_frame(self.logic.core.last_job.cine, int(item.data(qt.Qt.UserRole)))

    def onExportSeg(self) -> None:
        with slicer.util.tryWithErrorDisplay("DICOM-SEG export failed.", waitCursor=True):
            self.logic.configure(self._parameterNode)
            folder = tempfile.mkdtemp(prefix="fsvos-seg-")
            path = self.logic.core.export_seg(self._parameterNode.cine, self._parameterNode.segmentation,
                                              os.path.join(folder, "segmentation.dcm"), self._chosenSegments(),
                                              geometry=self._parameterNode.segGeometry)
            from DICOMLib import DICOMUtils

            DICOMUtils.importDicom(folder, copyFiles=True)
            self._status(f"DICOM-SEG of every frame added to the DICOM database ({path}).")

    def onExportNrrd(self) -> None:
        path = qt.QFileDialog.getSaveFileName(None, "Save segmentation of every frame", "segmentation.seg.nrrd",
                                              "Segmentation (*.seg.nrrd)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(".seg.nrrd export failed.", waitCursor=True):
            self.logic.core.export_seg_nrrd(self._parameterNode.cine, self._parameterNode.segmentation, path,
                                            self._chosenSegments())
            self._status(f"Saved {path}.")


#
# Logic
#


def _pythonSlicer() -> str:
    """PythonSlicer (the Python interpreter of Slicer) for the out-of-process engine."""
    import shutil

    exe = shutil.which("PythonSlicer")
    if exe:
        return exe
    folder = os.path.dirname(sys.executable)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return sys.executable


def _instanceToFile(uid: str) -> Optional[str]:
    db = getattr(slicer, "dicomDatabase", None)
    return db.fileForInstance(uid) if db is not None else None


class FSVOSPropagateLogic(ScriptedLoadableModuleLogic):
    """Slicer-side wrapper: parameter node and Slicer's scene; the work is in FSVOSPropagateLib.logic (``core``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.core = _Logic(fsvos_scene.SceneContext.from_slicer(), EngineSettings(), python=_pythonSlicer(),
                           instance_to_file=_instanceToFile)

    def getParameterNode(self):
        return FSVOSPropagateParameterNode(super().getParameterNode())

    def configure(self, p) -> None:
        self.core.ctx = fsvos_scene.SceneContext.from_slicer()
        self.core.settings = EngineSettings(weights=p.weightsPath or None, window=p.window, reference=p.reference,
                                            mem_every=p.memEvery, precision=p.precision, device=p.device,
                                            work_size=p.workSize)

    def showConfidencePlot(self, table) -> None:
        """A plot of the minimum confidence per frame, shown in the plot view."""
        series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", table.GetName() + " min")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("frame")
        series.SetYColumnName("min confidence")
        series.SetPlotType(series.PlotTypeScatter)
        chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", table.GetName() + " chart")
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetXAxisTitle("frame")
        chart.SetYAxisTitle("confidence")
        self.plotNodes = [series, chart]
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    def removeConfidencePlot(self) -> None:
        for node in getattr(self, "plotNodes", []):
            if node.GetScene() is not None:
                slicer.mrmlScene.RemoveNode(node)
        self.plotNodes = []


#
# Test: the same bodies as Testing/test_slicer_module.py, on Slicer's own scene
#


class FSVOSPropagateTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        import shutil

        from FSVOSPropagateLib import testing as bodies

        work = tempfile.mkdtemp(prefix="fsvos-selftest-")
        try:
            weights = bodies.make_checkpoint(os.path.join(work, "compact_random.pth"))
            for check in bodies.ALL_CHECKS:
                self.setUp()
                self.delayDisplay(f"FSVOSPropagate: {check.__name__}")
                folder = os.path.join(work, check.__name__)
                os.makedirs(folder)
                from pathlib import Path

                fx = bodies.Fixture(ctx=fsvos_scene.SceneContext.from_slicer(), work=Path(folder),
                                    python=_pythonSlicer(), weights=weights)
                if check(fx) is False:
                    logging.warning("dciodvfy is not installed: the exported SEG was not validated with it")
            self.delayDisplay("FSVOSPropagate: all checks passed")
        finally:
            shutil.rmtree(work, ignore_errors=True)
