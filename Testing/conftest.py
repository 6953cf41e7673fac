"""Shared fixtures: small synthetic cines and models made on the spot (nothing is downloaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "FSVOSPropagate"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def moving_keys(t, ck, h, w, seed=0):
    """Spatially smooth keys drifting frame to frame, as a network makes them (the windows' logits
    peak near the centre, so the best-first segment order and its early stop are exercised)."""
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(1, ck, h, w, generator=g), 3, 1, 1)[0] * 3
    mem = torch.stack([torch.roll(base, (i % 3 - 1, i), (1, 2)) + 0.3 * torch.randn(ck, h, w, generator=g)
                       for i in range(t)]).reshape(t, ck, h * w)
    q = (base + 0.3 * torch.randn(ck, h, w, generator=g)).reshape(ck, h * w)
    return mem, q


def run_fsvos(*args, cwd=None) -> subprocess.CompletedProcess:
    """The real `fsvos` command as a subprocess (this checkout's engine first on the path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "FSVOSPropagate"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "fsvos", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def moving_disc_cine(n_frames: int = 8, size: int = 64, radius: float = 9.0, step: float = 2.0,
                     seed: int = 0, second_object: bool = True):
    """A textured background with a dark disc moving right (and a bright square moving down).

    Returns frames uint8 (T, H, W) and true labels uint8 (T, H, W).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    base = 150 + 25 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    frames, labels = [], []
    for t in range(n_frames):
        img = base + 8 * rng.standard_normal((size, size))
        lab = np.zeros((size, size), np.uint8)
        disc = (yy - size * 0.45) ** 2 + (xx - size * 0.25 - step * t) ** 2 < radius ** 2
        img[disc] -= 90
        lab[disc] = 1
        if second_object:
            y0 = int(size * 0.1 + step * 0.5 * t)
            sq = (yy >= y0) & (yy < y0 + 10) & (xx >= size - 22) & (xx < size - 12)
            img[sq] += 70
            lab[sq] = 2
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        labels.append(lab)
    return np.stack(frames), np.stack(labels)


def randomised_model(arch=None, seed: int = 0):
    """An FSVOSNet with random weights and non-trivial BatchNorm statistics (eval mode)."""
    from fsvos.model.network import XRAVOS_ARCH, FSVOSNet

    torch.manual_seed(seed)
    model = FSVOSNet(arch or XRAVOS_ARCH).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.0)
                mod.bias.normal_(0, 0.1)
    return model


@pytest.fixture(scope="session")
def xravos_model():
    return randomised_model()


@pytest.fixture(scope="session")
def compact_model():
    from fsvos.model.network import COMPACT_ARCH

    return randomised_model(COMPACT_ARCH, seed=1)


@pytest.fixture()
def disc_cine():
    return moving_disc_cine()
