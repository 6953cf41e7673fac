"""Synthetic X-ray coronary angiography cines with exact dense labels.

No real angiography data can be downloaded in this project, so the tests,
the ``fsvos eval`` / ``fsvos bench`` commands and training smoke tests use
cines generated here.  One module per job:

* :mod:`.vessels`  - geometry of the projected coronary tree;
* :mod:`.contrast` - contrast wash-in, opacification and wash-out;
* :mod:`.motion`   - cardiac (periodic, non-rigid) and breathing motion;
* :mod:`.devices`  - catheter, guidewire, balloon, stent, marker pair;
* :mod:`.anatomy`  - spine, ribs, diaphragm, lungs, heart silhouette;
* :mod:`.raster`   - tubes to pixel footprints (projected thickness);
* :mod:`.xray`     - Beer-Lambert, scatter, Poisson noise, detector blur, log, window;
* :mod:`.case`     - assembly of one case (:func:`generate_case`);
* :mod:`.writer`   - files on disk (:func:`write_case`, :func:`write_dataset`).

Label conventions: 0 background, 1 vessel tree, 2 catheter, then guidewire
and devices (balloon / stent / marker) when present, K <= 5.  Where objects
overlap: devices > guidewire > catheter > vessel.  A vessel pixel is labelled
only where its contrast is visible: iodine attenuation across the lumen
(mu x concentration x diameter) of at least 0.05 (:data:`VISIBLE_ATTENUATION`).  Splits: ``all``, ``no-devices``
(never a balloon, stent or marker: train on it, test on ``devices`` for
object types never seen in training, as MOSXAV's test split) and ``devices``.

Example::

    from fsvos.synth import generate_case, write_case
    case = generate_case(seed=1, size=256, n_frames=40)
    case.frames.shape, case.labels.shape, case.support_frame, case.objects
    write_case(case, "out/case_000")
"""

from .case import LABEL_PRECEDENCE, SPLITS, SynthCase, generate_case
from .contrast import VISIBLE_ATTENUATION
from .devices import DEVICE_CATEGORIES
from .writer import case_frame_count, case_seed, write_case, write_dataset

__all__ = [
    "SynthCase",
    "generate_case",
    "write_case",
    "write_dataset",
    "case_seed",
    "case_frame_count",
    "SPLITS",
    "DEVICE_CATEGORIES",
    "LABEL_PRECEDENCE",
    "VISIBLE_ATTENUATION",
]
