"""The engine run out of process: ``python -m fsvos.cli propagate ... --progress json``.

:class:`ProcessRunner` writes the cine (``frames.npy``) and the supports (``support_<f>.npy``) to a
temporary folder, starts the command (in Slicer the interpreter is PythonSlicer, in tests
``sys.executable``) in its own process group / session, and reads its JSON-lines stdout on a
thread.  :meth:`ProcessRunner.poll` never blocks: the Slicer widget calls it from a QTimer
(the GUI stays responsive), tests call it in a loop.  :meth:`ProcessRunner.cancel` kills the
whole process tree.  The result (``result.npz``: labels, confidence) is read only after a
successful exit; a non-zero exit raises :class:`RunFailed` with the engine's last error line.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


class RunFailed(RuntimeError):
    """The engine process ended with an error (the message names it)."""


class RunCancelled(RuntimeError):
    """The run was cancelled by the user."""


@dataclass
class EngineResult:
    """What a run produces, in or out of process."""

    labels: np.ndarray  # uint8 (T, H, W)
    confidence: np.ndarray  # float32 (T, K)
    supports: List[int]
    seconds: float = 0.0
    log: str = ""


@dataclass
class EngineSettings:
    """Engine options (the module's Settings)."""

    weights: Optional[str] = None  # None: bundled default
    window: int = 15
    reference: str = "similarity"
    mem_every: int = 6
    precision: str = "auto"  # bf16 where native and validated for the weights, else fp32 (fsvos.runtime)
    device: str = "auto"  # "auto": cuda when torch sees a GPU, else cpu
    matching: str = "local"
    top_k: int = 20
    work_size: str = "auto"  # frame size the network sees: auto (shrink to the weights' size), native, or pixels

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except Exception:
            return "cpu"

    def cli_args(self) -> List[str]:
        args = ["--window", str(int(self.window)), "--reference", self.reference, "--mem-every",
                str(int(self.mem_every)), "--precision", self.precision, "--device", self.resolved_device(),
                "--matching", self.matching, "--top-k", str(int(self.top_k)), "--work-size", str(self.work_size)]
        if self.weights:
            args += ["--weights", os.fspath(self.weights)]
        return args


def module_dir() -> Path:
    """The folder holding the ``fsvos`` package (the module's folder)."""
    return Path(__file__).resolve().parents[1]


def kill_process_tree(pid: int) -> None:
    """Kill a process and all its children (its process group / session on POSIX, taskkill /T on Windows)."""
    if os.name == "nt":  # pragma: no cover - Windows
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True)
        return
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class ProcessRunner:
    """One out-of-process propagation.  Use: ``r = ProcessRunner(...); r.start(); while r.poll() == RUNNING: ...``."""

    def __init__(self, frames: np.ndarray, supports: Dict[int, np.ndarray], settings: EngineSettings,
                 python: Optional[str] = None, work_dir: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                 progress: Optional[Callable[[int, int], None]] = None, extra_args: Sequence[str] = ()):
        self.frames = np.asarray(frames)
        self.supports = {int(f): np.asarray(v, np.uint8) for f, v in supports.items()}
        self.settings = settings
        self.python = python or sys.executable
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="fsvos-run-"))
        self.env = env
        self.progress_callback = progress
        self.extra_args = list(extra_args)
        self.state = "idle"
        self.done = 0
        self.total = 0
        self.error: Optional[str] = None
        self.result: Optional[EngineResult] = None
        self.events: List[Dict[str, Any]] = []
        self.process: Optional[subprocess.Popen] = None
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader: Optional[threading.Thread] = None
        self._eof = False
        self._t0 = 0.0
        self._stderr_path = self.work_dir / "stderr.txt"

    # -- command ---------------------------------------------------------------------------
    def command(self) -> List[str]:
        out = self.work_dir / "result.npz"
        cmd = [self.python, "-m", "fsvos.cli", "propagate", os.fspath(self.work_dir / "frames.npy")]
        for f in sorted(self.supports):
            cmd += ["--support", f"{f}={self.work_dir / f'support_{f:05d}.npy'}"]
        cmd += ["--output", os.fspath(out), "--progress", "json"] + self.settings.cli_args() + self.extra_args
        return cmd

    def _environment(self) -> Dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        path = os.fspath(module_dir())
        old = env.get("PYTHONPATH", "")
        if path not in old.split(os.pathsep):
            env["PYTHONPATH"] = path + (os.pathsep + old if old else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.work_dir / "frames.npy", np.ascontiguousarray(self.frames))
        for f, lab in self.supports.items():
            np.save(self.work_dir / f"support_{f:05d}.npy", lab)
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":  # pragma: no cover
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        self._stderr = open(self._stderr_path, "wb")
        self._t0 = time.perf_counter()
        self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self._stderr,
                                        stdin=subprocess.DEVNULL, env=self._environment(), cwd=os.fspath(self.work_dir),
                                        **kwargs)
        self.state = RUNNING
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            self._lines.put(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    # -- polling ---------------------------------------------------------------------------
    def handle_line(self, line: str) -> None:
        """Parse one stdout line (JSON event or other text, which is kept in the log)."""
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            self.events.append({"event": "text", "text": line})
            return
        if not isinstance(event, dict):
            return
        self.events.append(event)
        if event.get("event") == "progress":
            self.done, self.total = int(event.get("done", 0)), int(event.get("total", 0))
            if self.progress_callback is not None:
                self.progress_callback(self.done, self.total)

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._eof = True
                return
            self.handle_line(line)

    def poll(self) -> str:
        """Handle what arrived; returns the state (running, done, failed, cancelled).  Never blocks long."""
        if self.state != RUNNING:
            return self.state
        assert self.process is not None
        self._drain()
        if self.process.poll() is None:
            return RUNNING
        if not self._eof and self._reader is not None:  # the process ended: its last lines are on the way
            self._reader.join(timeout=5)
            self._drain()
        self._finish(self.process.returncode)
        return self.state

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> str:
        """Poll until the run ends (tests and scripts); raises TimeoutError after `timeout` s."""
        t_end = None if timeout is None else time.monotonic() + timeout
        while self.poll() == RUNNING:
            if t_end is not None and time.monotonic() > t_end:
                self.cancel()
                raise TimeoutError(f"the engine did not finish within {timeout} s")
            time.sleep(interval)
        return self.state

    def stderr_text(self) -> str:
        try:
            return self._stderr_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def _finish(self, code: int) -> None:
        self._stderr.close()
        log = self.stderr_text()
        if self.state == CANCELLED:
            self.cleanup()
            return
        if code != 0:
            lines = [ln for ln in log.splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("fsvos: error") or "Error" in ln]
            detail = (errors or lines or [f"exit status {code}"])[-1]
            self.error = f"the engine failed (exit status {code}): {detail}"
            self.state = FAILED
            self.cleanup()
            return
        try:
            with np.load(self.work_dir / "result.npz") as z:
                labels = z["labels"].astype(np.uint8)
                confidence = z["confidence"].astype(np.float32) if "confidence" in z else \
                    np.ones((labels.shape[0], int(labels.max())), np.float32)
                supports = [int(v) for v in z["supports"]]
        except (OSError, KeyError, ValueError) as exc:
            self.error = f"the engine exited without a readable result ({exc})"
            self.state = FAILED
            self.cleanup()
            return
        self.result = EngineResult(labels=labels, confidence=confidence, supports=supports,
                                   seconds=time.perf_counter() - self._t0, log=log)
        self.state = DONE
        self.cleanup()

    # -- cancel ----------------------------------------------------------------------------
    def cancel(self) -> None:
        """Kill the engine and everything it started; the state becomes cancelled."""
        if self.process is None or self.state != RUNNING:
            return
        self.state = CANCELLED
        kill_process_tree(self.process.pid)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._finish(self.process.returncode)

    def cleanup(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def raise_for_state(self) -> EngineResult:
        if self.state == DONE and self.result is not None:
            return self.result
        if self.state == CANCELLED:
            raise RunCancelled("propagation cancelled")
        raise RunFailed(self.error or f"the engine is {self.state}")
