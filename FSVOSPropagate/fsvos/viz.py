"""Pictures a person can check: contact sheets of frames with label contours."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

#: label colours (RGB), label 1 first; the Slicer-like palette of the module
PALETTE = np.array([
    (230, 60, 60), (60, 200, 90), (70, 140, 250), (250, 200, 40), (200, 90, 230),
    (40, 220, 220), (250, 130, 40), (160, 160, 160),
], dtype=np.uint8)


def label_colour(label: int) -> tuple:
    return tuple(int(c) for c in PALETTE[(label - 1) % len(PALETTE)])


def overlay_frame(frame: np.ndarray, labels: np.ndarray, truth: Optional[np.ndarray] = None,
                  fill_alpha: float = 0.25) -> np.ndarray:
    """Grey frame (H, W) uint8 with predicted labels as tinted areas + coloured contours and, when given,
    true labels as thin white contours.  Returns RGB uint8 (H, W, 3)."""
    import cv2

    rgb = np.repeat(frame[..., None], 3, axis=2).astype(np.float32)
    for lab in [int(v) for v in np.unique(labels) if v]:
        m = labels == lab
        rgb[m] = (1 - fill_alpha) * rgb[m] + fill_alpha * np.array(label_colour(lab), np.float32)
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    for lab in [int(v) for v in np.unique(labels) if v]:
        contours, _ = cv2.findContours((labels == lab).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, label_colour(lab), 1)
    if truth is not None:
        for lab in [int(v) for v in np.unique(truth) if v]:
            contours, _ = cv2.findContours((truth == lab).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def contact_sheet(path: "os.PathLike[str] | str", frames: np.ndarray, labels: np.ndarray,
                  truth: Optional[np.ndarray] = None, supports: Sequence[int] = (), n: int = 8,
                  columns: int = 4, tile: int = 256, title: Optional[str] = None,
                  frame_numbers: Optional[Sequence[int]] = None) -> Path:
    """Write a PNG of ``n`` evenly spaced frames (supports always included) with label contours.

    frames/labels/truth: (T, H, W).  Each tile is resized to ``tile`` px wide and captioned with its
    frame number (``frame_numbers[i]`` for frame i if given, e.g. when the frames are a selection
    from a cine; "S" marks a support frame).  Written atomically.
    """
    import cv2

    t = frames.shape[0]
    picks = sorted(set(np.linspace(0, t - 1, num=min(n, t)).round().astype(int).tolist()) | set(supports))
    tiles = []
    for f in picks:
        img = overlay_frame(frames[f], labels[f], None if truth is None else truth[f])
        h, w = img.shape[:2]
        img = cv2.resize(img, (tile, max(1, round(h * tile / w))), interpolation=cv2.INTER_NEAREST)
        caption = f"frame {f if frame_numbers is None else frame_numbers[f]}" + (" S" if f in supports else "")
        cv2.putText(img, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    rows = []
    th = max(tl.shape[0] for tl in tiles)
    blank = np.zeros((th, tile, 3), np.uint8)
    for i in range(0, len(tiles), columns):
        row = tiles[i:i + columns]
        row = [np.pad(tl, ((0, th - tl.shape[0]), (0, 0), (0, 0))) for tl in row]
        row += [blank] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    sheet = np.concatenate(rows, axis=0)
    if title:
        bar = np.full((28, sheet.shape[1], 3), 30, np.uint8)
        cv2.putText(bar, title[:120], (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        sheet = np.concatenate([bar, sheet], axis=0)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial.png")
    cv2.imwrite(os.fspath(tmp), sheet[..., ::-1])
    os.replace(tmp, path)
    return path
