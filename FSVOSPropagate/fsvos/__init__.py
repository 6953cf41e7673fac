"""fsvos: few-shot video object segmentation of X-ray angiography cines.

The engine of the FSVOSPropagate 3D Slicer extension.  One painted (support)
frame is propagated to every frame of a cine with the local-matching method of
"Few-Shot Video Object Segmentation in X-Ray Angiography Using Local Matching
and Spatio-Temporal Consistency Loss" (XRAVOS), which builds on STCN.

Typical use::

    from fsvos import Propagator, load_model
    p = Propagator(load_model(None), matching="local", reference="similarity", window=15)
    r = p.propagate(frames, {0: labels})
    r.labels        # uint8 (T, H, W)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import FsvosCancelled, FsvosError, FsvosInputError
from .model.weights import load_model, save_checkpoint
from .inference.propagator import PropagationResult, Propagator

__all__ = [
    "__version__",
    "Propagator",
    "PropagationResult",
    "load_model",
    "save_checkpoint",
    "FsvosError",
    "FsvosInputError",
    "FsvosCancelled",
]
