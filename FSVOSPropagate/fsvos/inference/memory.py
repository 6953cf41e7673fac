"""The memory bank: keys and values of support frames and keyframes.

* Support frames are permanent.
* Every r-th propagated frame becomes a keyframe (the propagation driver decides).
* Optionally the last frame is kept as a temporary entry, replaced by the next.
* A capacity bound (``max_frames``) evicts the oldest non-permanent keyframe, so
  memory use stays constant on long cines.

Keys are the query keys of those frames (no second encoding).  Storage is a set
of slots in pre-allocated buffers that grow by doubling:
keys (slots, N, C_k) float32 position-major (each position's key contiguous, for the
exact re-scoring of chosen candidates; the similarity GEMMs read the transposed view
as well), |k|^2 (slots, N), and the value table (slots*N, K*C_v) laid out
position-major for the readout's row gathers.  With ``selection_keys`` the bank also
keeps every frame's bf16 operand of the similarity GEMM ([2k, -|k|^2] / sqrt(C_k),
:func:`~fsvos.inference.matching.selection_keys`), made once when the frame is stored
instead of for every query frame (0.3 ms per query frame at 8 memory frames and 2-3 ms
at 64 for the compact model at 512 px, bf16).  With ``int8_keys`` it keeps the keys in int8 as
well, with one scale for the whole bank (its largest key element is 127), for the integer
GEMMs of candidate selection (:class:`~fsvos.inference.matching.Int8Keys`); a frame with a
larger key element re-quantises the stored frames to a new scale.  Where the fused int8 selection
runs (:mod:`.int8_select`), the int8 keys are also kept packed in its layout, with their element
sums (made once per memory frame instead of once per query frame: 0.3-0.6 ms per query frame at
8 memory frames for the compact model at 512 px).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from . import int8_select
from .matching import Int8Keys, quantise_int8, write_selection_keys


@dataclass
class MemoryEntry:
    frame: int
    permanent: bool
    temporary: bool
    slot: int


class MemoryBank:
    """Memory of one propagation pass.

    max_frames: capacity in frames (support frames count; None = unbounded).
    selection_keys: also keep the bf16 selection keys of every frame (see the module notes).
    int8_keys: also keep the keys quantised to int8 (see the module notes).
    """

    def __init__(self, max_frames: Optional[int] = None, selection_keys: bool = False, int8_keys: bool = False):
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        self.max_frames = max_frames
        self.entries: List[MemoryEntry] = []
        self._keys: Optional[torch.Tensor] = None
        self._key_sq: Optional[torch.Tensor] = None
        self._table: Optional[torch.Tensor] = None
        self._sel: Optional[torch.Tensor] = None  # (slots, N, C_k + 1) bf16 when kept
        self._keep_sel = bool(selection_keys)
        self._q8: Optional[torch.Tensor] = None  # (slots, N, C_k) int8 when kept
        self._q8_scale: Optional[float] = None  # None until a frame with a non-zero key
        self._keep_q8 = bool(int8_keys)
        # the int8 keys packed for the fused selection, and their element sums, where it runs
        self._keep_packed = self._keep_q8 and int8_select.available()
        self._packed: Optional[torch.Tensor] = None  # (slots, N_pad * 64) int8 when kept
        self._key_sum: Optional[torch.Tensor] = None  # (slots, N) int32 when kept
        self._n = 0  # positions per frame

    # -- storage -------------------------------------------------------------------------------
    def _ensure_slots(self, slots: int, key: torch.Tensor, value_rows: torch.Tensor) -> None:
        have = 0 if self._keys is None else self._keys.shape[0]
        if slots <= have:
            return
        new = max(slots, 2 * have, 4)
        if self.max_frames is not None:
            new = max(slots, min(new, self.max_frames + 1))
        ck, n = key.shape
        keys = key.new_zeros((new, n, ck))
        key_sq = key.new_zeros((new, n))
        table = value_rows.new_zeros((new * n, value_rows.shape[1]))
        sel = key.new_zeros((new, n, ck + 1), dtype=torch.bfloat16) if self._keep_sel else None
        q8 = key.new_zeros((new, n, ck), dtype=torch.int8) if self._keep_q8 else None
        keep_packed = self._keep_packed and ck <= int8_select.CHANNELS
        packed = (key.new_zeros((new, int8_select.padded_positions(n) * int8_select.CHANNELS), dtype=torch.int8)
                  if keep_packed else None)
        key_sum = key.new_zeros((new, n), dtype=torch.int32) if keep_packed else None
        if have:
            keys[:have] = self._keys
            key_sq[:have] = self._key_sq
            table[:have * n] = self._table
            if sel is not None:
                sel[:have] = self._sel
            if q8 is not None:
                q8[:have] = self._q8
            if packed is not None:
                packed[:have] = self._packed
                key_sum[:have] = self._key_sum
        self._keys, self._key_sq, self._table, self._sel, self._n = keys, key_sq, table, sel, n
        self._q8, self._packed, self._key_sum = q8, packed, key_sum

    def _write(self, slot: int, key: torch.Tensor, value_rows: torch.Tensor) -> None:
        n = self._n
        self._keys[slot] = key.t()
        self._key_sq[slot] = key.pow(2).sum(0)
        self._table[slot * n:(slot + 1) * n] = value_rows
        if self._sel is not None:
            write_selection_keys(self._keys[slot], self._key_sq[slot], self._sel[slot])
        if self._q8 is not None:
            top = float(self._keys[slot].abs().max())
            if top > 0.0 and (self._q8_scale is None or top > 127.0 * self._q8_scale):
                self._q8_scale = top / 127.0  # the stored frames (slots before this one) on the new scale
                used = len(self.entries)
                self._q8[:used] = quantise_int8(self._keys[:used], self._q8_scale)
                self._pack(0, used)
            self._q8[slot] = quantise_int8(self._keys[slot], self._q8_scale or 1.0)
            self._pack(slot, slot + 1)

    def _pack(self, start: int, stop: int) -> None:
        """The packed int8 keys and key sums of slots start..stop-1 from their int8 keys, when kept."""
        if self._packed is not None and stop > start:
            self._packed[start:stop] = int8_select.pack_keys(self._q8[start:stop])
            torch.sum(self._q8[start:stop], dim=2, dtype=torch.int32, out=self._key_sum[start:stop])

    def _free_slot(self, entry: MemoryEntry) -> None:
        """Remove an entry; the last slot moves into its place (order of slots does not matter)."""
        last = len(self.entries) - 1
        self.entries.remove(entry)
        if entry.slot != last:
            mover = next(e for e in self.entries if e.slot == last)
            n = self._n
            self._keys[entry.slot] = self._keys[last]
            self._key_sq[entry.slot] = self._key_sq[last]
            self._table[entry.slot * n:(entry.slot + 1) * n] = self._table[last * n:(last + 1) * n]
            if self._sel is not None:
                self._sel[entry.slot] = self._sel[last]
            if self._q8 is not None:
                self._q8[entry.slot] = self._q8[last]
            if self._packed is not None:
                self._packed[entry.slot] = self._packed[last]
                self._key_sum[entry.slot] = self._key_sum[last]
            mover.slot = entry.slot

    # -- public API ----------------------------------------------------------------------------
    def add(self, frame: int, key: torch.Tensor, value: torch.Tensor, *, permanent: bool = False,
            temporary: bool = False) -> None:
        """Store a frame.

        key: (C_k, h, w) or (C_k, N) query key of the frame; value: (K, C_v, h, w) values of all objects.
        A temporary entry replaces the previous temporary one; any new entry drops it too.
        """
        key = key.reshape(key.shape[0], -1).float()
        k, cv = value.shape[:2]
        value_rows = value.reshape(k, cv, -1).permute(2, 0, 1).reshape(-1, k * cv)  # (N, K*C_v)
        for e in [e for e in self.entries if e.temporary]:
            self._free_slot(e)
        if self.max_frames is not None and not permanent:
            while len(self.entries) >= self.max_frames:
                evictable = [e for e in self.entries if not e.permanent]
                if not evictable:
                    break
                self._free_slot(min(evictable, key=lambda e: self.entries.index(e)))
        slot = len(self.entries)
        self._ensure_slots(slot + 1, key, value_rows)
        self._write(slot, key, value_rows)
        self.entries.append(MemoryEntry(frame=frame, permanent=permanent, temporary=temporary, slot=slot))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def frames(self) -> List[int]:
        return [e.frame for e in self.entries]

    @property
    def keys(self) -> torch.Tensor:
        """(T, C_k, N) float32, a transposed view of the position-major storage (T, N, C_k)."""
        return self._keys[:len(self.entries)].transpose(1, 2)

    @property
    def key_sq(self) -> torch.Tensor:
        """(T, N) float32, |k|^2 per position."""
        return self._key_sq[:len(self.entries)]

    @property
    def selection_keys(self) -> Optional[torch.Tensor]:
        """(T, C_k + 1, N) bfloat16 selection keys (a transposed view of position-major storage),
        or None when the bank was made without them."""
        return None if self._sel is None else self._sel[:len(self.entries)].transpose(1, 2)

    @property
    def int8_keys(self) -> Optional[Int8Keys]:
        """The keys in int8 ((T, N, C_k) position-major) with the bank's scale, or None when the
        bank was made without them."""
        if self._q8 is None:
            return None
        used = len(self.entries)
        return Int8Keys(q8=self._q8[:used], scale=self._q8_scale or 1.0,
                        packed=None if self._packed is None else self._packed[:used],
                        key_sum=None if self._key_sum is None else self._key_sum[:used])

    @property
    def table(self) -> torch.Tensor:
        """(T*N, K*C_v) values, position-major."""
        return self._table[:len(self.entries) * self._n]
