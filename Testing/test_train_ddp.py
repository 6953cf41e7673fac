"""Two processes under torchrun (gloo, CPU): both train, on their own data streams, their
parameters stay identical, only rank 0 writes, and resuming is exact."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent('''
    import hashlib, json, os, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[2])
    from conftest import moving_disc_cine
    from fsvos.train import distributed
    from fsvos.train.config import TrainConfig
    from fsvos.train.data import CinePool
    from fsvos.train.loop import train

    out = sys.argv[1]
    info = distributed.setup("cpu")  # one process group for the three runs below
    pool = CinePool([moving_disc_cine(n_frames=10, size=64, seed=s) for s in range(4)])

    def cfg(name, steps):
        return TrainConfig(arch="compact", steps=steps, batch=1, crop=64, max_skip=3, objects=2, lr=1e-3,
                           window=7, out=os.path.join(out, name), log_every=1, checkpoint_every=1, seed=0,
                           contrastive=0.01)

    _, a = train(cfg("a", 2), pool, log=lambda m: None, return_model=True)
    train(cfg("b", 1), pool, log=lambda m: None)
    _, b = train(cfg("b", 2), pool, log=lambda m: None, return_model=True)
    torch.save({"a": a.state_dict(), "b": b.state_dict()}, os.path.join(out, f"rank{info.rank}.pt"))
    with open(os.path.join(out, f"rank{info.rank}.json"), "w") as fh:
        json.dump({"rank": info.rank, "world": info.world, "backend": torch.distributed.get_backend()}, fh)
    distributed.cleanup(distributed.DistInfo(owns_group=True))
''')


def test_two_processes_train_as_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "FSVOSPropagate"))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path), str(ROOT / "Testing")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(i["rank"], i["world"], i["backend"]) for i in infos] == [(0, 2, "gloo"), (1, 2, "gloo")]
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k, v in s0["a"].items():
        if "running" in k or "num_batches" in k:
            continue  # BatchNorm statistics are per process (rank 0's are broadcast at each forward)
        assert torch.equal(v, s1["a"][k]), k  # DDP: identical parameters on both ranks
        torch.testing.assert_close(v, s0["b"][k], rtol=1e-4, atol=1e-5, msg=k)  # exact resume
    # rank 0 alone wrote the log (one row per step) and the checkpoints, with one data stream per rank
    rows = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    state = torch.load(tmp_path / "a" / "last.pth", map_location="cpu", weights_only=True)
    assert state["step"] == 2 and len(state["rng_ranks"]) == 2 and state["rng_ranks"][0] != state["rng_ranks"][1]
    assert (tmp_path / "a" / "final.pth").is_file() and not list(tmp_path.glob("*/*.partial"))
