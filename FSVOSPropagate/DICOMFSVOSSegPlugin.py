"""DICOM plugin: loads a DICOM Segmentation of an X-ray angiography cine (as FSVOSPropagate writes it, without a
Frame of Reference; frames reference the XA frames) back onto the XA cine's sequence, as a segmentation
sequence in its browser.  Slicer's own DICOM-SEG plugin (dcmqi) cannot read such SEGs.
"""

import logging
import os
import sys

import slicer
from DICOMLib import DICOMLoadable, DICOMPlugin

_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if _MODULE_DIR not in sys.path:
    sys.path.insert(0, _MODULE_DIR)


class DICOMFSVOSSegPluginClass(DICOMPlugin):
    def __init__(self):
        super().__init__()
        self.loadType = "FSVOS XA Segmentation"

    def examineFiles(self, files):
        from FSVOSPropagateLib.dicomseg import describe_fsvos_seg

        loadables = []
        for path in files:
            desc = describe_fsvos_seg(path)
            if desc is None:
                continue
            loadable = DICOMLoadable()
            loadable.files = [path]
            loadable.name = desc["name"]
            loadable.tooltip = "Segmentation of every frame of an X-ray cine (loaded onto the cine's sequence)"
            loadable.selected = True
            # above Slicer's DICOMSegmentationPlugin, which cannot place frames without a Frame of Reference
            loadable.confidence = 0.9 if desc["pseudo3d"] else 0.99
            loadable.referencedInstanceUIDs = desc["referenced_instances"]
            loadable.fsvosReferencedSeries = desc["referenced_series"]
            loadables.append(loadable)
        return loadables

    def load(self, loadable):
        from FSVOSPropagateLib import scene as fsvos_scene
        from FSVOSPropagateLib.dicomseg import find_cine_for_instances, load_seg_onto_sequence

        ctx = fsvos_scene.SceneContext.from_slicer()
        seq = find_cine_for_instances(ctx, loadable.referencedInstanceUIDs)
        if seq is None and loadable.fsvosReferencedSeries:
            from DICOMLib import DICOMUtils

            DICOMUtils.loadSeriesByUID([loadable.fsvosReferencedSeries])
            seq = find_cine_for_instances(ctx, loadable.referencedInstanceUIDs)
        if seq is None:
            logging.error("FSVOS SEG: the referenced XA cine is not in the scene and could not be loaded from the "
                          "DICOM database")
            return None
        source = None
        for uid in loadable.referencedInstanceUIDs:
            path = slicer.dicomDatabase.fileForInstance(uid)
            if path and os.path.isfile(path):
                source = path
                break
        if source is None:
            logging.error("FSVOS SEG: the referenced XA file is not in the DICOM database")
            return None
        cine = fsvos_scene.read_cine(ctx, seq)
        node = load_seg_onto_sequence(ctx, loadable.files[0], cine, source, loadable.name)
        self.addSeriesInSubjectHierarchy(loadable, node)
        return node


class DICOMFSVOSSegPlugin:
    """The hook through which Slicer finds the plugin (a hidden scripted module)."""

    def __init__(self, parent):
        parent.title = "DICOM FSVOS XA Segmentation Plugin"
        parent.categories = ["Developer Tools.DICOM Plugins"]
        parent.contributors = ["The FSVOSPropagate developers"]
        parent.helpText = "Loads DICOM Segmentations of X-ray angiography cines onto the cine's sequence."
        parent.acknowledgementText = ""
        parent.hidden = True
        try:
            slicer.modules.dicomPlugins
        except AttributeError:
            slicer.modules.dicomPlugins = {}
        slicer.modules.dicomPlugins["DICOMFSVOSSegPlugin"] = DICOMFSVOSSegPluginClass
