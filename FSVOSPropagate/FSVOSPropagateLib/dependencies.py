"""Dependencies of the engine inside Slicer, installed on first use after the user agrees.

Order: Slicer 5.12's ``slicer.packaging.pip_ensure`` with this folder's ``requirements.txt`` (it asks the user
itself), else ``slicer.util.pip_install`` after ``confirm`` returns True.  torch through the PyTorch extension
(``PyTorchUtils``) when it is installed, else pip.  Nothing here imports Qt; ``confirm`` is given by the widget.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Callable, List, Optional

REQUIREMENTS = Path(__file__).with_name("requirements.txt")

#: pip name -> import name, where they differ
_IMPORT_NAMES = {"pynrrd": "nrrd", "pillow": "PIL", "opencv-python-headless": "cv2"}


def requirement_lines() -> List[str]:
    return [ln.split("#")[0].strip() for ln in REQUIREMENTS.read_text().splitlines() if ln.split("#")[0].strip()]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0]


def missing_requirements() -> List[str]:
    """Requirement lines whose package cannot be imported (torch listed separately, as "torch")."""
    out = []
    for req in requirement_lines():
        name = _name(req)
        if importlib.util.find_spec(_IMPORT_NAMES.get(name, name.replace("-", "_"))) is None:
            out.append(req)
    if importlib.util.find_spec("torch") is None:
        out.append("torch")
    return out


def ensure_dependencies(confirm: Optional[Callable[[str], bool]] = None, requester: str = "FSVOSPropagate") -> bool:
    """Install what is missing; returns True when everything is importable.  Slicer only."""
    missing = missing_requirements()
    if not missing:
        return True
    import slicer

    others = [r for r in missing if r != "torch"]
    if others:
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer >= 5.12
            reqs = packaging.load_requirements(REQUIREMENTS) if hasattr(packaging, "load_requirements") else None
            if reqs is None:
                from packaging.requirements import Requirement

                reqs = [Requirement(r) for r in others]
            packaging.pip_ensure(reqs, requester=requester)
        else:
            if confirm is not None and not confirm(
                    f"{requester} needs these Python packages, which will be downloaded and installed now:\n\n"
                    + "\n".join(others) + "\n\nContinue?"):
                return False
            slicer.util.pip_install(others)
    if "torch" in missing:
        try:
            import PyTorchUtils  # the PyTorch extension

            torch_logic = PyTorchUtils.PyTorchUtilsLogic()
            if not torch_logic.torchInstalled():
                if torch_logic.installTorch(askConfirmation=True) is None:
                    return False
        except ImportError:
            if confirm is not None and not confirm(
                    f"{requester} needs PyTorch (about 1 GB to download). Install it now with pip? (Installing the "
                    "PyTorch extension first lets you choose a GPU build.)"):
                return False
            slicer.util.pip_install("torch")
    return not missing_requirements()
