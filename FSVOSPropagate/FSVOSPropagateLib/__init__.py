"""FSVOSPropagate module library: everything the Slicer module does, usable without Qt.

* :mod:`.scene`    - MRML context, cine and support reading, result written as a segmentation sequence (undoable)
* :mod:`.runner`   - the engine run out of process (JSON-lines progress, cancel kills the process tree)
* :mod:`.logic`    - :class:`FSVOSPropagateLogic`: settings, in-process / out-of-process runs, review, export
* :mod:`.dicomseg` - DICOM-SEG export of the scene and loading such SEGs back onto the XA sequence
* :mod:`.testing`  - test bodies shared by pytest (slicer-core) and the module's self-test in Slicer
"""
