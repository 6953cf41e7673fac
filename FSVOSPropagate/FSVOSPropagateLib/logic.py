"""FSVOSPropagateLogic: the module's logic, without Qt.

    ctx = SceneContext.from_slicer()            # or SceneContext.standalone() (slicer-core)
    logic = FSVOSPropagateLogic(ctx, EngineSettings(window=15))
    job = logic.prepare(cine_node, segmentation_node, segment_ids)   # reads the scene, changes nothing
    runner = logic.start(job)                   # out of process; poll() from a timer, cancel() to stop
    ... runner.poll() ...
    record = logic.apply(job, runner.raise_for_state())              # one undoable step
    logic.undo()

or, blocking, ``logic.propagate(cine_node, segmentation_node, out_of_process=True)``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

from . import scene as sc
from .runner import CANCELLED, DONE, EngineResult, EngineSettings, ProcessRunner, RunCancelled, RunFailed


@dataclass
class Job:
    """A propagation prepared from the scene (nothing in the scene changed yet)."""

    cine: sc.CineInput
    segmentation_node: Any
    supports: sc.Supports

    @property
    def support_frames(self) -> List[int]:
        return sorted(self.supports.labels)


class FSVOSPropagateLogic:
    def __init__(self, ctx: sc.SceneContext, settings: Optional[EngineSettings] = None, python: Optional[str] = None,
                 instance_to_file: Optional[Callable[[str], str]] = None):
        self.ctx = ctx
        self.settings = settings or EngineSettings()
        self.python = python  # PythonSlicer in Slicer; sys.executable by default
        self.instance_to_file = instance_to_file
        self._model_cache: Tuple[Optional[str], Any] = ("<none>", None)
        self.last_record: Optional[sc.ApplyRecord] = None
        self.last_result: Optional[EngineResult] = None
        self.last_job: Optional[Job] = None

    # -- reading the scene -----------------------------------------------------------------
    def prepare(self, cine_node, segmentation_node, segment_ids: Optional[Sequence[str]] = None) -> Job:
        """Read the cine and the painted supports; raises FSVOSSceneError naming the problem."""
        cine = sc.read_cine(self.ctx, cine_node)
        if segmentation_node is None:
            raise sc.FSVOSSceneError("no segmentation selected: paint the supports in a segmentation")
        if segment_ids is not None and len(segment_ids) == 0:
            raise sc.FSVOSSceneError("no segment chosen to propagate")
        supports = sc.read_supports(self.ctx, cine, segmentation_node, segment_ids)
        if len(supports.labels) >= cine.n_frames:
            raise sc.FSVOSSceneError("every frame is painted; there is nothing to propagate")
        return Job(cine=cine, segmentation_node=segmentation_node, supports=supports)

    # -- running the engine ----------------------------------------------------------------
    def model(self):
        from fsvos.model.weights import load_model

        key = self.settings.weights or None
        if self._model_cache[0] != key:
            self._model_cache = (key, load_model(key))
        return self._model_cache[1]

    def run_in_process(self, job: Job, progress: Optional[Callable[[int, int], None]] = None,
                       cancel: Optional[threading.Event] = None) -> EngineResult:
        """Run the engine in this process (scripts, tests; blocks)."""
        import time

        from fsvos import FsvosCancelled, FsvosInputError, Propagator

        s = self.settings
        t0 = time.perf_counter()
        try:
            propagator = Propagator(self.model(), matching=s.matching, reference=s.reference, window=s.window,
                                    top_k=s.top_k or None, mem_every=s.mem_every, precision=s.precision,
                                    device=s.resolved_device(), work_size=s.work_size)
            r = propagator.propagate(job.cine.frames, job.supports.labels, progress=progress, cancel=cancel)
        except FsvosCancelled:
            raise RunCancelled("propagation cancelled") from None
        except FsvosInputError as exc:
            raise RunFailed(f"the engine refused the input: {exc}") from None
        return EngineResult(labels=r.labels, confidence=r.confidence, supports=list(r.supports),
                            seconds=time.perf_counter() - t0)

    def start(self, job: Job, progress: Optional[Callable[[int, int], None]] = None, **kwargs) -> ProcessRunner:
        """Start the engine out of process; the caller polls the returned runner (never blocks)."""
        runner = ProcessRunner(job.cine.frames, job.supports.labels, self.settings, python=self.python,
                               progress=progress, **kwargs)
        runner.start()
        return runner

    def run_out_of_process(self, job: Job, progress: Optional[Callable[[int, int], None]] = None,
                           timeout: Optional[float] = None) -> EngineResult:
        runner = self.start(job, progress)
        runner.wait(timeout)
        return runner.raise_for_state()

    # -- writing the result ----------------------------------------------------------------
    def apply(self, job: Job, result: EngineResult) -> sc.ApplyRecord:
        """Put the result into the scene in one undoable step."""
        k = len(job.supports.segments)
        if result.labels.shape != job.cine.shape:
            raise RunFailed(f"the engine returned labels of shape {result.labels.shape} for a cine of "
                            f"{job.cine.shape}")
        if int(result.labels.max(initial=0)) > k:
            raise RunFailed(f"the engine returned label values up to {int(result.labels.max())} for {k} segment(s)")
        record = sc.apply_result(self.ctx, job.cine, job.segmentation_node, job.supports, result.labels,
                                 result.confidence)
        self.last_record, self.last_result, self.last_job = record, result, job
        return record

    def propagate(self, cine_node, segmentation_node, segment_ids: Optional[Sequence[str]] = None,
                  out_of_process: bool = True, progress=None, cancel=None, timeout: Optional[float] = None):
        """Prepare, run and apply (blocking).  Returns (ApplyRecord, EngineResult)."""
        job = self.prepare(cine_node, segmentation_node, segment_ids)
        if out_of_process:
            result = self.run_out_of_process(job, progress, timeout)
        else:
            result = self.run_in_process(job, progress, cancel)
        return self.apply(job, result), result

    def undo(self) -> None:
        """Undo the last applied result (one MRML undo step)."""
        browser = self.last_job.cine.browser if self.last_job is not None else None
        sc.undo(self.ctx, browser)
        self.last_record = None

    # -- review ----------------------------------------------------------------------------
    def least_certain_frames(self, n: int = 5) -> List[Tuple[int, float]]:
        if self.last_result is None or self.last_job is None:
            return []
        return sc.least_certain_frames(self.last_result.confidence, self.last_job.support_frames, n)

    def jump_to_frame(self, cine: sc.CineInput, frame: int) -> None:
        """Show `frame` (0-based) in the cine's browser (sequence cines)."""
        if cine.browser is not None:
            cine.browser.SetSelectedItemNumber(int(frame))
            self.ctx.update_proxies(cine.browser)

    # -- export ----------------------------------------------------------------------------
    def export_seg(self, cine_node, segmentation_node, path, segment_ids=None, geometry=None):
        from .dicomseg import export_seg

        cine = sc.read_cine(self.ctx, cine_node)
        return export_seg(self.ctx, cine, segmentation_node, path, segment_ids, self.instance_to_file, geometry)

    def export_seg_nrrd(self, cine_node, segmentation_node, path, segment_ids=None):
        from .dicomseg import export_seg_nrrd

        cine = sc.read_cine(self.ctx, cine_node)
        return export_seg_nrrd(self.ctx, cine, segmentation_node, path, segment_ids)


__all__ = ["FSVOSPropagateLogic", "Job", "EngineSettings", "EngineResult", "ProcessRunner", "RunCancelled",
           "RunFailed", "DONE", "CANCELLED"]
