"""What the segmented objects are: SNOMED CT codes, default colours, Slicer terminology.

Each object of a segmentation has a *category* (a plain word the user gives:
``vessel``, ``coronary artery``, ``catheter``, ``guidewire``, ``stent``,
``balloon``, ``marker`` or ``generic``) that maps to the DICOM coded
Segmented Property Category and Type (SNOMED CT, scheme ``SCT``; code values
and meanings as in pydicom's code dictionary, i.e. the DICOM standard's
context groups CID 7150 / 7151 and friends):

===============  ==============================  ==================================================
category         property category               property type
===============  ==============================  ==================================================
vessel           91723000 Anatomical Structure   59820001 Blood Vessel
coronary artery  91723000 Anatomical Structure   41801008 Coronary artery
catheter         260787004 Physical object       19923001 Catheter
guidewire        260787004 Physical object       272224001 Guide Wire
stent            260787004 Physical object       65818007 Stent
balloon          260787004 Physical object       102319006 Percutaneous transluminal angioplasty balloon
marker           260787004 Physical object       262301009 Opaque Marker
generic          260787004 Physical object       260787004 Physical object
===============  ==============================  ==================================================

Colours are RGB triples 0..255; DICOM stores them as CIELab
(RecommendedDisplayCIELabValue, three 16-bit values), converted here with the
same sRGB (D65) formulas as highdicom's :class:`highdicom.color.CIELabColor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "CATEGORIES",
    "ObjectCodes",
    "normalize_category",
    "codes_for",
    "category_from_codes",
    "default_color",
    "rgb_to_dicom_lab",
    "dicom_lab_to_rgb",
    "slicer_terminology",
    "category_from_slicer_terminology",
]

RGB = Tuple[int, int, int]


@dataclass(frozen=True)
class ObjectCodes:
    """The DICOM description of one object category."""

    category: Code
    type: Code
    color: RGB


_ANATOMY = codes.SCT.AnatomicalStructure  # 91723000
_OBJECT = codes.SCT.PhysicalObject  # 260787004

#: category name -> codes and default colour
CATEGORIES: Dict[str, ObjectCodes] = {
    "vessel": ObjectCodes(_ANATOMY, codes.SCT.BloodVessel, (216, 101, 79)),
    "coronary artery": ObjectCodes(_ANATOMY, codes.SCT.CoronaryArtery, (240, 60, 60)),
    "catheter": ObjectCodes(_OBJECT, codes.SCT.Catheter, (50, 130, 230)),
    "guidewire": ObjectCodes(_OBJECT, codes.SCT.GuideWire, (250, 210, 0)),
    "stent": ObjectCodes(_OBJECT, codes.SCT.Stent, (180, 100, 240)),
    "balloon": ObjectCodes(_OBJECT, codes.SCT.PercutaneousTransluminalAngioplastyBalloon, (0, 200, 200)),
    "marker": ObjectCodes(_OBJECT, codes.SCT.OpaqueMarker, (60, 220, 60)),
    "generic": ObjectCodes(_OBJECT, _OBJECT, (255, 140, 0)),
}

_ALIASES = {
    "vessels": "vessel",
    "blood vessel": "vessel",
    "artery": "vessel",
    "coronary": "coronary artery",
    "coronary arteries": "coronary artery",
    "guide wire": "guidewire",
    "wire": "guidewire",
    "pta balloon": "balloon",
    "radiopaque marker": "marker",
    "opaque marker": "marker",
    "object": "generic",
    "other": "generic",
    "": "generic",
}

#: colours for objects of the generic category (cycled by object index)
_GENERIC_PALETTE: Tuple[RGB, ...] = (
    (255, 140, 0),
    (128, 174, 128),
    (241, 214, 145),
    (177, 122, 101),
    (111, 184, 210),
    (216, 101, 79),
    (221, 130, 101),
    (144, 238, 144),
    (192, 104, 88),
    (220, 245, 20),
)


def normalize_category(category: Optional[str]) -> str:
    """The canonical category name for `category` (case, '_' and '-' ignored).

    Raises ValueError listing the known categories for anything else.
    """
    key = " ".join(str(category or "").lower().replace("_", " ").replace("-", " ").split())
    key = _ALIASES.get(key, key)
    if key not in CATEGORIES:
        known = ", ".join(CATEGORIES)
        raise ValueError(f"unknown object category {category!r} (known: {known})")
    return key


def codes_for(category: Optional[str]) -> ObjectCodes:
    """Codes and default colour of a category name (see :func:`normalize_category`)."""
    return CATEGORIES[normalize_category(category)]


def category_from_codes(type_scheme: str, type_value: str) -> str:
    """The category whose property *type* code is (scheme, value); ``generic`` when none is."""
    for name, entry in CATEGORIES.items():
        if entry.type.scheme_designator == type_scheme and entry.type.value == str(type_value):
            return name
    return "generic"


def default_color(category: Optional[str], index: int = 0) -> RGB:
    """Default RGB colour of an object: its category's colour, or a palette colour for generic objects.

    `index` (0-based object index) picks the palette entry for generic objects.
    """
    key = normalize_category(category)
    if key == "generic":
        return _GENERIC_PALETTE[index % len(_GENERIC_PALETTE)]
    return CATEGORIES[key].color


# ----------------------------------------------------------------------------- colours


def _srgb_to_linear(c: float) -> float:
    c = c / 255.0
    return ((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92


def _linear_to_srgb(c: float) -> float:
    return (1.055 * (c ** (1 / 2.4)) - 0.055 if c > 0.0031308 else 12.92 * c) * 255.0


def rgb_to_dicom_lab(rgb: Sequence[float]) -> Tuple[int, int, int]:
    """RGB (0..255) -> DICOM CIELab triple (L* 0..100 and a*, b* -128..127 scaled to 0..65535)."""
    if len(rgb) != 3 or any(not 0 <= float(c) <= 255 for c in rgb):
        raise ValueError(f"a colour is three numbers 0..255, got {tuple(rgb)!r}")
    r, g, b = (_srgb_to_linear(float(c)) * 100.0 for c in rgb)
    x = (r * 0.4124 + g * 0.3576 + b * 0.1805) / 95.047
    y = (r * 0.2126 + g * 0.7152 + b * 0.0722) / 100.0
    z = (r * 0.0193 + g * 0.1192 + b * 0.9505) / 108.883

    def f(t: float) -> float:
        return t ** (1.0 / 3) if t >= 8.85645167903563082e-3 else (841.0 / 108.0) * t + 4.0 / 29.0

    fx, fy, fz = f(x), f(y), f(z)
    lightness = min(max(116 * fy - 16, 0.0), 100.0)
    a = min(max(500 * (fx - fy), -128.0), 127.0)
    bb = min(max(200 * (fy - fz), -128.0), 127.0)
    return (
        int(round(lightness * 0xFFFF / 100.0)),
        int(round((a + 128.0) * 0xFFFF / 255.0)),
        int(round((bb + 128.0) * 0xFFFF / 255.0)),
    )


def dicom_lab_to_rgb(lab: Sequence[int]) -> RGB:
    """DICOM CIELab triple (0..65535 each) -> RGB (0..255), clipped to the sRGB gamut."""
    if len(lab) != 3:
        raise ValueError(f"a DICOM CIELab value has 3 numbers, got {tuple(lab)!r}")
    lightness = float(lab[0]) * 100.0 / 0xFFFF
    a = float(lab[1]) * 255.0 / 0xFFFF - 128.0
    b = float(lab[2]) * 255.0 / 0xFFFF - 128.0
    fy = (lightness + 16) / 116
    fx = a / 500 + fy
    fz = fy - b / 200

    def finv(t: float) -> float:
        t3 = t**3
        return t3 if t3 > 0.008856 else (t - 16.0 / 116) / 7.787

    x, y, z = 0.95047 * finv(fx), 1.0 * finv(fy), 1.08883 * finv(fz)
    r = x * 3.2406 + y * -1.5372 + z * -0.4986
    g = x * -0.9689 + y * 1.8758 + z * 0.0415
    bl = x * 0.0557 + y * -0.2040 + z * 1.0570
    return tuple(int(min(max(round(_linear_to_srgb(max(c, 0.0))), 0), 255)) for c in (r, g, bl))  # type: ignore[return-value]


# ----------------------------------------------------------------------------- Slicer terminology

_SLICER_CONTEXT = "Segmentation category and type - DICOM master list"
_SLICER_ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"


def slicer_terminology(category: Optional[str]) -> str:
    """Slicer's TerminologyEntry string for a category (as stored in .seg.nrrd segment tags)."""
    entry = codes_for(category)
    cat, typ = entry.category, entry.type
    return (
        f"{_SLICER_CONTEXT}~{cat.scheme_designator}^{cat.value}^{cat.meaning}"
        f"~{typ.scheme_designator}^{typ.value}^{typ.meaning}~^^~{_SLICER_ANATOMY_CONTEXT}~^^~^^"
    )


def category_from_slicer_terminology(terminology: Optional[str]) -> str:
    """The category of a Slicer TerminologyEntry string (by its type code); ``generic`` when unknown."""
    if not terminology:
        return "generic"
    parts = str(terminology).split("~")
    if len(parts) < 3:
        return "generic"
    fields = parts[2].split("^")
    if len(fields) < 2:
        return "generic"
    return category_from_codes(fields[0], fields[1])
