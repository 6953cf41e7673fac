"""The propagation driver: supports -> labels on every frame.

Forward from the earliest support to the last frame and backward from the
latest support to the first.  Every pass starts with ALL support frames in its
memory (permanent); a propagated frame becomes a keyframe when it is at least
``mem_every`` frames past the last memory frame of the pass (a support frame
resets that count), and the pass's final frame never does (as the released
code).  Frames between two supports are predicted by both passes and fused,
weighted by temporal distance: the forward result weighs d_next / (d_prev +
d_next), where d_prev / d_next are the distances to the supports before / after.
Support frames keep their painted labels exactly.

Query keys do not depend on masks and are encoded in batches of
``batch_size`` frames; the decoder's object-independent work (skip convs on f8
and f4) runs once per frame; the affinity is computed once per frame for all
objects.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FsvosCancelled, FsvosInputError
from ..io.cine import window_to_uint8
from ..model.fold import fold_batchnorm
from ..model.network import FSVOSNet
from ..model.winograd import enable_winograd
from ..runtime import resolve_precision
from . import int8_select, pixel_kernels, window_select
from .matching import WindowGrid, global_affinity, int8_available, local_affinity, readout, rescores_few
from .memory import MemoryBank
from .preprocess import aggregate, frames_to_input, pad_for, pad_masks, unpad

ProgressFn = Callable[[int, int], None]
CancelLike = Union[threading.Event, Callable[[], bool], None]


@dataclass
class PropagationResult:
    """Result of :meth:`Propagator.propagate`.

    probs: float32 (K+1, T, H, W), background first, at the cine's resolution; frames
        no pass reached (before the first support when propagating forward only) are background.
        None unless the propagator was made with ``keep_probs=True`` (it grows with the cine:
        4 bytes x (K+1) x T x H x W).
    labels: uint8 (T, H, W): argmax of probs; support frames are exactly the painted labels.
    confidence: float32 (T, K) in [0, 1]: soft IoU between each object's probability map and its
        hard mask (1 = the model is sure of every pixel; an object that is confidently absent is 1);
        support frames are 1.
    supports: the support frame indices.
    object_ids: the label values 1..K.
    timings: seconds spent in "encode" (key + value encoders), "match" (affinity + readout), "decode".
    frame_stats: float64 (P, 3), one row per predicted frame in the order predicted: memory frames
        matched against, seconds in matching + readout, seconds for the whole frame (wall time since
        the previous frame finished: encoders, matching, decoder, memory update, labels).
    """

    probs: Optional[np.ndarray]
    labels: np.ndarray
    confidence: np.ndarray
    supports: List[int]
    object_ids: List[int]
    timings: Dict[str, float]
    frame_stats: Optional[np.ndarray] = None


def _check_frames(frames) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 3:
        raise FsvosInputError(f"frames must be a (T, H, W) array, got shape {tuple(arr.shape)}")
    if arr.shape[0] < 2:
        raise FsvosInputError(f"a cine needs at least 2 frames, got {arr.shape[0]}")
    return np.ascontiguousarray(window_to_uint8(arr))


def check_supports(supports: Mapping[int, np.ndarray], n_frames: int, shape) -> Dict[int, np.ndarray]:
    """Validate support label maps; returns {frame: uint8 (H, W)} sorted by frame.

    Rules: at least one support; frame indices within the cine; each map of the frames' size,
    integer labels >= 0 and not empty; the union of labels over all supports is 1..K without gaps.
    """
    if not supports:
        raise FsvosInputError("at least one support frame with labels is needed")
    out: Dict[int, np.ndarray] = {}
    seen = set()
    for frame, labels in sorted(supports.items(), key=lambda kv: int(kv[0])):
        f = int(frame)
        where = f"support frame {f}"
        if not 0 <= f < n_frames:
            raise FsvosInputError(f"{where} is out of range: the cine has frames 0..{n_frames - 1}")
        lab = np.asarray(labels)
        if lab.ndim == 3 and lab.shape[0] == 1:
            lab = lab[0]
        if lab.shape != tuple(shape):
            raise FsvosInputError(f"{where}: mask of size {lab.shape} does not match the frames' {tuple(shape)}")
        if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
            if np.issubdtype(lab.dtype, np.floating) and np.isfinite(lab).all() and np.all(lab == np.round(lab)):
                lab = lab.astype(np.int64)
            else:
                raise FsvosInputError(f"{where}: labels must be integers")
        if lab.min() < 0 or lab.max() > 255:
            raise FsvosInputError(f"{where}: labels must be in 0..255")
        lab = lab.astype(np.uint8)
        if not lab.any():
            raise FsvosInputError(f"{where}: the mask is empty (no labelled pixel)")
        seen.update(int(v) for v in np.unique(lab) if v)
        out[f] = lab
    k = max(seen)
    missing = sorted(set(range(1, k + 1)) - seen)
    if missing:
        raise FsvosInputError(f"labels must be 1..{k} without gaps; missing {missing} "
                              f"(present: {sorted(seen)})")
    return out


def _argmax0(prob: torch.Tensor):
    """argmax over dim 0 of a (K+1, H, W) map (the first maximum on ties, as torch.argmax) and the
    maximum itself, in K elementwise passes: a reduction across the strided first dim is 50x slower
    on the CPU.  Returns (labels uint8 (H, W), best (H, W) = prob[labels])."""
    best = prob[0].clone()
    lab = torch.zeros(prob.shape[1:], dtype=torch.uint8, device=prob.device)
    for i in range(1, prob.shape[0]):
        better = prob[i] > best
        lab.masked_fill_(better, i)
        torch.maximum(best, prob[i], out=best)
    return lab, best


def _cancelled(cancel: CancelLike) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def confidence_of(probs, labels, best=None) -> np.ndarray:
    """Soft IoU per object of one frame: probs (K+1, H, W), labels (H, W) (NumPy or torch) -> (K,).

    For object i: sum(min(p_i, m_i)) / sum(max(p_i, m_i)) with m_i = (labels == i); an object with
    less than one pixel's worth of union is confidently absent (1).  Computed without per-object
    masks: min(p_i, m_i) is p_i where labels == i, i.e. the frame's maximum there when labels is
    the argmax (``best``, (H, W), if already known), so intersections are one weighted bincount.
    """
    p = torch.as_tensor(probs)
    lab = torch.as_tensor(labels, device=p.device).reshape(-1).long()
    k = p.shape[0] - 1
    if best is None:
        best = p.reshape(k + 1, -1).gather(0, lab[None])[0]
    inter = torch.bincount(lab, weights=best.reshape(-1).double(), minlength=k + 1)[1:k + 1]
    count = torch.bincount(lab, minlength=k + 1)[1:k + 1]
    total = p[1:].sum(dim=(1, 2)).double()
    return pixel_kernels.soft_iou(inter.cpu().numpy(), count.cpu().numpy(), total.cpu().numpy())


def labels_and_confidence(prob: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) uint8 and per-object confidence (K,) of a (K+1, H, W) probability map: one
    compiled pass on the CPU (:mod:`.pixel_kernels`), torch elsewhere."""
    if pixel_kernels.usable(prob):
        return pixel_kernels.labels_and_confidence(prob)
    lab, best = _argmax0(prob)
    return lab.cpu().numpy(), confidence_of(prob, lab, best)


#: the smallest working size: two positions at stride 16
MIN_WORK_SIZE = 32
#: frame size of the paper's datasets (MOSXAV, XACV, CADICA: 512 x 512) and of the bundled default's training
DEFAULT_WORK_SIZE = 512


def resolve_work_size(work_size: Union[int, str, None], meta: Optional[Mapping] = None) -> Optional[int]:
    """"auto" -> the frame size the weights were trained at: ``meta["work_size"]`` when the key is
    there (None there: native), else 512; "native"/None -> None (no resizing); a number >= 32 -> itself."""
    if work_size == "auto":
        meta = meta or {}
        work_size = meta["work_size"] if "work_size" in meta else DEFAULT_WORK_SIZE
    if work_size is None or work_size == "native":
        return None
    text = str(work_size).strip()
    if isinstance(work_size, bool) or not text.isdigit():
        raise FsvosInputError(f"work size must be 'auto', 'native' or a whole number of pixels, not {work_size!r}")
    size = int(text)
    if size < MIN_WORK_SIZE:
        raise FsvosInputError(f"work size must be at least {MIN_WORK_SIZE} pixels, not {size}")
    return size


def working_shape(h: int, w: int, work_size: Optional[int], enlarge: bool = True) -> Tuple[int, int]:
    """(h, w) of the frames the network sees: the longer side work_size, the aspect ratio kept
    (frames already smaller stay as they are unless ``enlarge``)."""
    if work_size is None or max(h, w) == work_size or (max(h, w) < work_size and not enlarge):
        return h, w
    scale = work_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_maps(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(K, H, W) maps -> (K, h, w) float32: antialiased bilinear (averaging) when shrinking (a thin
    object's mask stays as a faint soft mask), bilinear when enlarging."""
    shrink = size[0] < maps.shape[-2] or size[1] < maps.shape[-1]
    return F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=False,
                         antialias=shrink)[0]


def resize_frames(frames_u8: torch.Tensor, size: Tuple[int, int], chunk: int = 16) -> torch.Tensor:
    """uint8 (T, H, W) -> uint8 (T, h, w) by :func:`resize_maps`, rounded to the nearest grey level."""
    out = torch.empty((frames_u8.shape[0],) + tuple(size), dtype=torch.uint8, device=frames_u8.device)
    for i in range(0, frames_u8.shape[0], chunk):
        out[i:i + chunk] = resize_maps(frames_u8[i:i + chunk], size).round_().clamp_(0, 255).to(torch.uint8)
    return out


class Propagator:
    """Propagates support labels through a cine with the local-matching FSVOS method.

    Parameters
    ----------
    model: an :class:`~fsvos.model.network.FSVOSNet` from :func:`fsvos.load_model`.
    matching: "local" (the paper) or "global" (STCN).
    reference: for local matching, where each memory frame's window is centred:
        "similarity" (most similar memory key, Eq. 8-9) or "fixed" (the query position).
    window: odd window size k (k x k positions at stride 16 per memory frame).
    top_k: softmax over only the top_k candidates (None = all).
    mem_every: r; a propagated frame becomes a keyframe every r frames.
    include_last: keep the last propagated frame as temporary memory.
    precision: "fp32", "bf16" (the network's weights and activations in bfloat16; the decoder's
        last upsampling, the sigmoid, the aggregation and the matching's softmax stay fp32; memory
        values are stored in bf16; the matching's candidates are chosen on a bf16 similarity, or
        on int8 keys with local matching on the CPU, and their logits computed in fp32:
        ``self.selection``) or "auto" (default): bf16 where the device computes it natively and the
        weights were validated in bf16 (``validated_precisions`` in their metadata, as the bundled
        default's), else fp32; ``self.precision`` is the one chosen.
    device: "cpu" or "cuda" (or any torch device string).
    max_memory_frames: memory capacity in frames (supports included); oldest keyframes go first.
    outside_logit: logit of window slots outside the map (-1 as the released code; -inf drops them).
    batch_size: frames whose query keys are encoded together (default 1 on CPU, 8 on GPU).
    keep_probs: also return the per-frame probabilities (memory grows with the cine's length;
        labels and confidence never need them).
    channels_last: run the network in channels-last memory format (default: on the CPU, where
        oneDNN convolutions are faster so).  The propagator runs a copy of the model with
        BatchNorm folded into the convolutions; ``model`` itself is not changed.
    winograd: run the wide 3x3 convolutions of the key encoder and the decoder (128+ channels in
        fp32, 192+ in bf16: those of the paper's network) as Winograd F(4x4, 3x3) convolutions,
        1.2-2.2x faster than oneDNN's direct ones here; in fp32 within 1e-4 of them in the
        probabilities, in bf16 with the same J&F (see :mod:`fsvos.model.winograd`).  Their
        transformed weights take 4x the memory of the weights (about 470 MB in fp32 and 235 MB
        in bf16 for the paper's network) (default: on the CPU; ``False`` gives the direct
        reference path).  ``self.winograd_convs`` counts the convolutions it applies to.
    work_size: the network sees frames resized so that their longer side is this many pixels
        (antialiased bilinear, i.e. averaging, when shrinking; bilinear when enlarging; support
        masks likewise, as soft masks); the probabilities are resized back (bilinear) before the labels are taken, so
        results are always at the cine's own size.  "native" or None: no resizing (as the paper);
        "auto" (default): cines larger than the frame size the weights were trained at
        (``work_size`` in their metadata; 512 without it: the paper's datasets and the bundled
        default's synthetic cines are 512 x 512) are shrunk to it, smaller ones stay native; a
        number resizes both ways.  ``self.work_size`` is the size chosen (None: native).
    """

    def __init__(self, model: FSVOSNet, matching: str = "local", reference: str = "similarity",
                 window: int = 15, top_k: Optional[int] = 20, mem_every: int = 6, include_last: bool = False,
                 precision: str = "auto", device: str = "cpu", max_memory_frames: Optional[int] = 64,
                 outside_logit: float = -1.0, batch_size: Optional[int] = None, keep_probs: bool = False,
                 channels_last: Optional[bool] = None, work_size: Union[int, str, None] = "auto",
                 winograd: Optional[bool] = None):
        if matching not in ("local", "global"):
            raise FsvosInputError(f"matching must be 'local' or 'global', not {matching!r}")
        if reference not in ("similarity", "fixed"):
            raise FsvosInputError(f"reference must be 'similarity' or 'fixed', not {reference!r}")
        if matching == "local" and (int(window) < 1 or int(window) % 2 == 0):
            raise FsvosInputError(f"window must be an odd number >= 1, not {window}")
        if top_k is not None and int(top_k) < 1:
            raise FsvosInputError(f"top_k must be >= 1 or None, not {top_k}")
        if int(mem_every) < 1:
            raise FsvosInputError(f"mem_every must be >= 1, not {mem_every}")
        if precision not in ("auto", "fp32", "bf16"):
            raise FsvosInputError(f"precision must be 'auto', 'fp32' or 'bf16', not {precision!r}")
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise FsvosInputError(f"unknown device {device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise FsvosInputError("device 'cuda' requested but PyTorch sees no CUDA GPU")
        meta = (getattr(model, "fsvos_info", None) or {}).get("meta")
        precision = resolve_precision(precision, dev, meta)
        self.work_size = resolve_work_size(work_size, meta)
        self.enlarge = work_size != "auto"  # "auto" only shrinks
        # inference copy: BatchNorm folded into the convs, channels-last on the CPU; the caller's
        # model is left as it is (it may be training)
        self._net_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model = fold_batchnorm(model).to(device=dev, dtype=self._net_dtype)
        self.channels_last = (dev.type == "cpu") if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if winograd is None:
            winograd = dev.type == "cpu"  # the width threshold depends on the dtype (model cast above)
        # every wide 3x3 convolution, the value encoder's too (it runs on memory frames only, every
        # r-th).  The paper's fuser (512 wide) takes about 400 MB of transformed weights in fp32
        # (bench --arch xravos: peak 2.1 -> 2.5 GB) for 0.28 -> 0.24-0.26 s of encoding per frame,
        # in bf16 half that memory for 2-4% more frames/s (1465 -> 1683 MB peak).  A narrow fuser
        # stays direct in fp32: the bundled default's (64 wide) ran 5% slower as Winograd
        # (bench fp32: 21.1, 21.6 against 22.4, 23.0 frames/s, alternating)
        narrow_fuser = self.model.value_encoder.fuser.block2.conv2.out_channels < 256
        exclude = [self.model.value_encoder.fuser] if precision == "fp32" and narrow_fuser else []
        self.winograd_convs = enable_winograd(self.model, exclude=exclude) if winograd else 0
        self.keep_probs = bool(keep_probs)
        self.matching, self.reference = matching, reference
        self.window, self.top_k = int(window), (None if top_k is None else int(top_k))
        self.mem_every, self.include_last = int(mem_every), bool(include_last)
        self.precision, self.device = precision, dev
        self.max_memory_frames = max_memory_frames
        self.outside_logit = float(outside_logit)
        self.batch_size = int(batch_size) if batch_size else (8 if dev.type == "cuda" else 1)

    # -- helpers --------------------------------------------------------------------------------
    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        """A (B, C, h, w) tensor in the network's dtype and memory format."""
        return x.to(self._net_dtype).contiguous(memory_format=self._memory_format)

    def _input(self, frames_t: torch.Tensor, pad) -> torch.Tensor:
        """uint8 (B, H, W) -> the network's input (B, 1, H', W'): the grey plane once, which the
        stems read as its 3 replicas."""
        return frames_to_input(frames_t, pad, self._net_dtype, self._memory_format, channels=1)

    @property
    def _select_bf16(self) -> bool:
        """Candidates chosen on a bf16 similarity, logits exact (the bf16 precision mode)."""
        return self.precision == "bf16"

    @property
    def _select_int8(self) -> bool:
        """In the bf16 mode with local matching on the CPU: candidates chosen on integer GEMMs of
        int8 keys instead (:func:`~fsvos.inference.matching.local_affinity`), where available."""
        return (self._select_bf16 and self.matching == "local" and self.device.type == "cpu"
                and window_select.available() and int8_available())

    @property
    def selection(self) -> str:
        """What the matching chooses its candidates on: "fp32" (the float32 similarity), "bf16" (a
        bf16 similarity) or "int8" (integer GEMMs of int8 keys); the kept candidates' logits are
        exact float32 in every case."""
        if not rescores_few(self.top_k):  # many candidates: all scored exactly
            return "fp32"
        return "int8" if self._select_int8 else "bf16" if self._select_bf16 else "fp32"

    @property
    def fused_int8(self) -> bool:
        """Whether, selecting on int8 keys, the integer products are computed inside the selection
        loop (AVX-512 VNNI, :mod:`~fsvos.inference.int8_select`) instead of by integer GEMMs."""
        return (self.selection == "int8" and self.top_k is not None
                and int8_select.usable(self.window, self.top_k, self.model.arch.key_dim))

    def _affinity(self, memory: MemoryBank, query_key: torch.Tensor, grid: Optional[WindowGrid]):
        select_bf16 = self._select_bf16
        if self.matching == "global":
            return global_affinity(memory.keys, memory.key_sq, query_key, self.top_k, select_bf16,
                                   sel_keys=memory.selection_keys)
        return local_affinity(memory.keys, memory.key_sq, query_key, grid, self.reference, self.top_k,
                              self.outside_logit, select_bf16, sel_keys=memory.selection_keys,
                              int8_keys=memory.int8_keys)

    # -- main entry ---------------------------------------------------------------------------
    @torch.inference_mode()
    def propagate(self, frames, supports: Mapping[int, np.ndarray],
                  directions: Sequence[str] = ("forward", "backward"),
                  progress: Optional[ProgressFn] = None, cancel: CancelLike = None) -> PropagationResult:
        """Propagate support labels to every frame.

        frames: (T, H, W) uint8, or any integer/float array (windowed to 8 bits with one linear
            min..max window over the whole cine).
        supports: {frame index: (H, W) integer labels}, 0 = background, 1..K objects; every
            support frame is taken as fully annotated (an object not painted there is absent).
        directions: any of "forward", "backward".
        progress: called as progress(frames_done, frames_total) after each predicted frame.
        cancel: a threading.Event or a callable; when set/true, FsvosCancelled is raised
            between frames.
        """
        import time

        frames_u8 = _check_frames(frames)
        t_total, h, w = frames_u8.shape
        sup = check_supports(supports, t_total, (h, w))
        dirs = tuple(directions)
        bad = [d for d in dirs if d not in ("forward", "backward")]
        if bad or not dirs:
            raise FsvosInputError(f"directions must be 'forward' and/or 'backward', got {list(dirs)}")
        k = max(int(lab.max()) for lab in sup.values())
        sup_frames = sorted(sup)
        hn, wn = working_shape(h, w, self.work_size, self.enlarge)  # the size the network sees
        resized = (hn, wn) != (h, w)
        pad = pad_for(hn, wn)
        hp, wp = hn + pad[2] + pad[3], wn + pad[0] + pad[1]
        h16, w16 = hp // 16, wp // 16
        grid = WindowGrid(h16, w16, self.window, self.device) if self.matching == "local" else None
        timings = {"encode": 0.0, "match": 0.0, "decode": 0.0}

        labels = np.zeros((t_total, h, w), dtype=np.uint8)
        confidence = np.ones((t_total, k), dtype=np.float32)
        probs = None
        if self.keep_probs:
            probs = np.zeros((k + 1, t_total, h, w), dtype=np.float32)
            probs[0] = 1.0
        first_pass = {}  # frame -> probs (K+1, H, W) of the first pass, for frames both passes predict
        both = set()
        if "forward" in dirs and "backward" in dirs:
            both = {f for f in range(sup_frames[0] + 1, sup_frames[-1]) if f not in sup}

        def finish(f: int, frame_prob: torch.Tensor) -> None:
            """Final probabilities (K+1, h, w) at the network's size of frame f -> labels, confidence
            (and probs) at the cine's size."""
            if resized:
                frame_prob = F.interpolate(frame_prob[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            labels[f], confidence[f] = labels_and_confidence(frame_prob)
            if probs is not None:
                probs[:, f] = frame_prob.cpu().numpy()

        frames_t = torch.from_numpy(frames_u8).to(self.device)
        if resized:
            frames_t = resize_frames(frames_t, (hn, wn))

        # support masks: one-hot, padded, STM-aggregated as the released code does
        sup_prob = {}
        for f, lab in sup.items():
            onehot = torch.from_numpy(np.stack([lab == i for i in range(1, k + 1)])).to(self.device)
            if resized:
                onehot = resize_maps(onehot, (hn, wn))  # soft masks at the network's size
            sup_prob[f] = aggregate(pad_masks(onehot, pad))  # (K+1, 1, H', W')

        # which frames each pass predicts
        plan = []
        if "forward" in dirs:
            plan.append(("forward", list(range(sup_frames[0] + 1, t_total))))
        if "backward" in dirs:
            plan.append(("backward", list(range(sup_frames[-1] - 1, -1, -1))))
        todo = sum(sum(1 for f in fr if f not in sup) for _, fr in plan)
        done = 0
        frame_stats: List[tuple] = []

        # support keys/values, shared by both passes
        support_kv = {}
        for f in sup_frames:
            t0 = time.perf_counter()
            x = self._input(frames_t[f:f + 1], pad)
            k16, _, f16, _, _ = self.model.encode_key(x)
            v16 = self.model.encode_value(x, f16, self._net(sup_prob[f][1:]))
            support_kv[f] = (k16[0].float(), v16)
            timings["encode"] += time.perf_counter() - t0

        for direction, order in plan:
            # with candidates selected on a bf16 similarity (or int8 keys), its GEMM operand is kept
            # per memory frame
            int8 = self._select_int8
            memory = MemoryBank(self.max_memory_frames, selection_keys=self._select_bf16 and not int8,
                                int8_keys=int8)
            for f in sup_frames:
                memory.add(f, support_kv[f][0], support_kv[f][1], permanent=True)
            last_mem = sup_frames[0] if direction == "forward" else sup_frames[-1]
            final = order[-1] if order else None
            pending = [f for f in order]
            t_prev = time.perf_counter()
            while pending:
                chunk, pending = pending[:self.batch_size], pending[self.batch_size:]
                need = [f for f in chunk if f not in sup]
                if need:
                    t0 = time.perf_counter()
                    x_all = self._input(frames_t[need], pad)
                    enc = self.model.encode_key(x_all)
                    timings["encode"] += time.perf_counter() - t0
                for f in chunk:
                    if f in sup:
                        last_mem = f
                        continue
                    if _cancelled(cancel):
                        raise FsvosCancelled()
                    j = need.index(f)
                    k16, f16_thin, f16, f8, f4 = (e[j:j + 1] for e in enc)
                    x = x_all[j:j + 1]

                    t0 = time.perf_counter()
                    aff = self._affinity(memory, k16[0].float().reshape(k16.shape[1], -1), grid)
                    mem_out = readout(aff, memory.table)  # (M, K*C_v), M = h16*w16 row-major
                    mem_out = self._net(mem_out.view(h16, w16, k, -1).permute(2, 3, 0, 1))  # (K, C_v, h16, w16)
                    t1 = time.perf_counter()
                    timings["match"] += t1 - t0
                    n_memory, t_match = len(memory), t1 - t0
                    obj_prob = self.model.decode(mem_out, f16_thin, f8, f4, x)  # (K, 1, H', W') float32
                    out_prob = aggregate(obj_prob)  # (K+1, 1, H', W')
                    timings["decode"] += time.perf_counter() - t1

                    frame_prob = unpad(out_prob[:, 0], pad).float()  # (K+1, H, W)
                    if f in first_pass:  # the other pass predicted it: fuse by temporal distance
                        prev = max(s for s in sup_frames if s < f)
                        nxt = min(s for s in sup_frames if s > f)
                        w_fwd = (nxt - f) / (nxt - prev)
                        w_this = w_fwd if direction == "forward" else 1.0 - w_fwd
                        finish(f, w_this * frame_prob + (1.0 - w_this) * first_pass.pop(f))
                    elif f in both:
                        first_pass[f] = frame_prob.clone()
                    else:
                        finish(f, frame_prob)

                    is_mem = abs(f - last_mem) >= self.mem_every
                    if f != final and (is_mem or self.include_last):
                        t0 = time.perf_counter()
                        v16 = self.model.encode_value(x, f16, self._net(out_prob[1:]))
                        memory.add(f, k16[0], v16, temporary=not is_mem)
                        timings["encode"] += time.perf_counter() - t0
                        if is_mem:
                            last_mem = f
                    done += 1
                    t_now = time.perf_counter()
                    frame_stats.append((n_memory, t_match, t_now - t_prev))
                    t_prev = t_now
                    if progress is not None:
                        progress(done, todo)

        for f, lab in sup.items():
            labels[f] = lab
            confidence[f] = 1.0
            if probs is not None:
                probs[:, f] = 0.0
                for i in range(k + 1):
                    probs[i, f][lab == i] = 1.0
        return PropagationResult(probs=probs, labels=labels, confidence=confidence, supports=sup_frames,
                                 object_ids=list(range(1, k + 1)), timings=timings,
                                 frame_stats=np.array(frame_stats, dtype=np.float64).reshape(-1, 3))
