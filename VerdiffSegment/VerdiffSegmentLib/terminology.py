"""DICOM / SNOMED CT terminology of the segments, headless (no slicer import).

Slicer serialises a segment's terminology as
  context~category~type~type modifier~anatomic context~region~region modifier
with each code as "scheme^value^meaning" (empty code: "^^"); see
vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry. ``slicer_logic`` writes the
string into the segment tag ``TerminologyEntry``; the JSON summary carries it too.

Codes and colours, and where they come from:

- per-level vertebrae C1..L5, S1 and the sacrum: ``SLICER_VERTEBRAE``, the vertebra entries
  of the per-level terminology that 3D Slicer shows for vertebrae,
  ``SegmentationCategoryTypeModifier-TotalSegmentator.term.json`` of the SlicerTotalSegmentator
  extension (github.com/lassoan/SlicerTotalSegmentator, commit
  6a82370b44a864bc855fcde7abf683c5191df011, ``TotalSegmentator/Resources``; Apache License
  2.0), category "Anatomical Structure": SNOMED CT code, meaning and
  ``recommendedDisplayRGBValue`` of each, copied as they are. Slicer's core terminologies
  (github.com/Slicer/Slicer, commit 583e9b37d50ead7daf7b783dce465ccaecec8809,
  ``Modules/Loadable/Terminologies/Resources``; the 3D Slicer licence, BSD-style) have no
  per-level vertebra: the DICOM master list has "Vertebra" (no colour), and the
  ``SlicerGeneralAnatomy`` list has the spine regions, whose colours are those the
  extension gives each region's vertebrae (``SLICER_SPINE_REGION_COLORS``: cervical
  255,255,207, thoracic 226,202,134, lumbar 212,188,102, as in Slicer's
  ``GenericAnatomyColors``). Checked against the codes used before (DICOM CID 7603
  "Vertebra", from the FHIR rendering of the DICOM context groups,
  bvdh/dicom-terminology-in-fhir ``ValueSet-dicom-cid-7603-Vertebra.fsh``): C1..L5 agree
  code for code; S1 (SCT 65985001) and the sacrum (SCT 54735007) are new, from Slicer's list;
- "Vertebra", "Vertebral body", the spine regions and the "Anatomical Structure"
  category: the codes ``slicer_logic`` used before per-level segments (SlicerTotalSegmentator's
  and Slicer's DICOM master lists).

Decisions: a whole-vertebra segment's type is its level's code (e.g. SCT 36470004 "L3
vertebra") in its spine region (S1: in the sacrum); a vertebral-body segment's type is
"Vertebral body" with its level's vertebra as the anatomic region (the body of the L3
vertebra) — no per-level body code was found that could be verified, so none is invented.
T13/L6 have no code and keep the generic type. The terminology context stays the DICOM
master list (the codes are DICOM's; Slicer without the extension knows no other list).

A named segment's colour is Slicer's for its level (``level_display_color``; T13/L6: their
region's), so the vertebrae of one region share a colour, as they do in Slicer with
TotalSegmentator; they stay apart by their outlines, names and the per-vertebra table. A
segment whose level is not decided has no terminology colour (``levels.level_color``).
"""

from __future__ import annotations

import re

TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
VERTEBRA = ("SCT", "51282000", "Vertebra")
VERTEBRAL_BODY = ("SCT", "3572006", "Vertebral body")  # "Structure of body of vertebra"
VERTEBRAL_COLUMN = ("SCT", "421060004", "Vertebral column")
SPINE_REGIONS = {
    "C": ("SCT", "122494005", "Cervical spine"),
    "T": ("SCT", "122495006", "Thoracic spine"),
    "L": ("SCT", "122496007", "Lumbar spine"),
}
EMPTY_CODE = ("", "", "")

# Slicer's per-level vertebra terminology (see the module docstring): level -> SNOMED CT
# code, code meaning, recommendedDisplayRGBValue (0-255).
SLICER_VERTEBRAE = {
    "C1": ("14806007", "C1 vertebra", (255, 255, 207)),
    "C2": ("39976000", "C2 vertebra", (255, 255, 207)),
    "C3": ("113205007", "C3 vertebra", (255, 255, 207)),
    "C4": ("5329002", "C4 vertebra", (255, 255, 207)),
    "C5": ("36978003", "C5 vertebra", (255, 255, 207)),
    "C6": ("36054005", "C6 vertebra", (255, 255, 207)),
    "C7": ("87391001", "C7 vertebra", (255, 255, 207)),
    "T1": ("64864005", "T1 vertebra", (226, 202, 134)),
    "T2": ("53733008", "T2 vertebra", (226, 202, 134)),
    "T3": ("1626008", "T3 vertebra", (226, 202, 134)),
    "T4": ("73071006", "T4 vertebra", (226, 202, 134)),
    "T5": ("56401006", "T5 vertebra", (226, 202, 134)),
    "T6": ("45296009", "T6 vertebra", (226, 202, 134)),
    "T7": ("62487009", "T7 vertebra", (226, 202, 134)),
    "T8": ("11068009", "T8 vertebra", (226, 202, 134)),
    "T9": ("82687006", "T9 vertebra", (226, 202, 134)),
    "T10": ("7610001", "T10 vertebra", (226, 202, 134)),
    "T11": ("12989004", "T11 vertebra", (226, 202, 134)),
    "T12": ("23215003", "T12 vertebra", (226, 202, 134)),
    "L1": ("66794005", "L1 vertebra", (212, 188, 102)),
    "L2": ("14293000", "L2 vertebra", (212, 188, 102)),
    "L3": ("36470004", "L3 vertebra", (212, 188, 102)),
    "L4": ("11994002", "L4 vertebra", (212, 188, 102)),
    "L5": ("49668003", "L5 vertebra", (212, 188, 102)),
    "S1": ("65985001", "S1 vertebra", (212, 208, 122)),
    "sacrum": ("54735007", "Sacrum", (212, 188, 102)),
}
# Slicer's SlicerGeneralAnatomy list: "Cervical spine", "Thoracic spine", "Lumbar spine".
SLICER_SPINE_REGION_COLORS = {"C": (255, 255, 207), "T": (226, 202, 134), "L": (212, 188, 102)}
SACRUM = ("SCT", SLICER_VERTEBRAE["sacrum"][0], SLICER_VERTEBRAE["sacrum"][1])
LEVEL_CODES = {level: code for level, (code, _, _) in SLICER_VERTEBRAE.items()}


def level_code(level: str) -> tuple[str, str, str] | None:
    """("SCT", code, "L3 vertebra") for a level of Slicer's list, else None."""
    return ("SCT", SLICER_VERTEBRAE[level][0], SLICER_VERTEBRAE[level][1]) if level in SLICER_VERTEBRAE else None


def level_region(level: str) -> tuple[str, str, str]:
    """The anatomic region of a whole vertebra of ``level``: its spine region, S1's is the
    sacrum, the sacrum's none."""
    if level == "sacrum":
        return EMPTY_CODE
    return SACRUM if level == "S1" else SPINE_REGIONS[level[0]]


def level_display_color(level: str | None) -> list[float] | None:
    """Slicer's colour (RGB 0-1) for a vertebra of ``level``: its entry's, else its spine
    region's (T13, L6); None for no level or one outside the spine regions."""
    if level in SLICER_VERTEBRAE:
        rgb = SLICER_VERTEBRAE[level][2]
    elif level and level[0] in SLICER_SPINE_REGION_COLORS:
        rgb = SLICER_SPINE_REGION_COLORS[level[0]]
    else:
        return None
    return [round(c / 255, 6) for c in rgb]


def _code(code: tuple[str, str, str]) -> str:
    return "^".join(code)


def serialize_terminology(category, type_, type_modifier=EMPTY_CODE, region=EMPTY_CODE, region_modifier=EMPTY_CODE) -> str:
    """A terminology entry string as Slicer writes it into the ``TerminologyEntry`` tag."""
    return "~".join(
        [TERMINOLOGY_CONTEXT, _code(category), _code(type_), _code(type_modifier), ANATOMIC_CONTEXT, _code(region), _code(region_modifier)]
    )


def parse_terminology(entry: str) -> dict:
    """Inverse of :func:`serialize_terminology` (for tests and for reading entries back)."""
    parts = entry.split("~")
    if len(parts) != 7:
        raise ValueError(f"a terminology entry has 7 '~'-separated fields, got {len(parts)}: {entry!r}")
    codes = [tuple(part.split("^")) for part in parts]
    for index in (1, 2, 3, 5, 6):
        if len(codes[index]) != 3:
            raise ValueError(f"field {index} of {entry!r} is not scheme^value^meaning")
    return {
        "context": parts[0],
        "category": codes[1],
        "type": codes[2],
        "type_modifier": codes[3],
        "anatomic_context": parts[4],
        "region": codes[5],
        "region_modifier": codes[6],
    }


def is_body_label(label: dict) -> bool:
    """Whether a card label is vertebral bodies (MR, X-ray) rather than whole vertebrae (CT)."""
    return "vertebral bod" in f"{label.get('name', '')} {label.get('covers', '')}".lower()


def terminology_for_label(label: dict) -> str:
    """The terminology entry of a segment (a card label, or a per-level segment).

    An explicit ``label["terminology"]`` wins. A segment with a ``level`` gets that level's
    code (see the module docstring); otherwise the type follows from what the label covers:
    vertebral bodies (MR, X-ray) get "Vertebral body", whole vertebrae (CT) "Vertebra",
    anything else "Vertebral column"; the region is the cervical/thoracic/lumbar spine when
    every level named in ``covers`` lies in that one region (e.g. "L1-L5" -> Lumbar spine)."""
    if label.get("terminology"):
        return str(label["terminology"])
    text = f"{label.get('name', '')} {label.get('covers', '')}".lower()
    level = label.get("level")
    code = level_code(level) if level else None
    if code is not None:
        if is_body_label(label):
            return serialize_terminology(ANATOMICAL_STRUCTURE, VERTEBRAL_BODY, region=code)
        return serialize_terminology(ANATOMICAL_STRUCTURE, code, region=level_region(level))
    if "vertebral bod" in text:
        type_ = VERTEBRAL_BODY
    elif "vertebra" in text:
        type_ = VERTEBRA
    else:
        type_ = VERTEBRAL_COLUMN
    # sacral levels count as a region of their own: "C5-S1" spans regions (none), not the cervical spine
    levels = {match.upper() for match in re.findall(r"\b([CTLSctls])\d{1,2}\b", str(label.get("covers", "")))}
    region = SPINE_REGIONS.get(levels.pop(), EMPTY_CODE) if len(levels) == 1 else EMPTY_CODE
    return serialize_terminology(ANATOMICAL_STRUCTURE, type_, region=region)
