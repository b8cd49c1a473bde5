"""DICOM / SNOMED CT terminology of the segments, headless (no slicer import).

Slicer serialises a segment's terminology as
  context~category~type~type modifier~anatomic context~region~region modifier
with each code as "scheme^value^meaning" (empty code: "^^"); see
vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry. ``slicer_logic`` writes the
string into the segment tag ``TerminologyEntry``; the JSON summary carries it too.

Codes and where they were checked:

- per-level vertebrae C1..L5: DICOM CID 7603 "Vertebra" (SNOMED CT codes, as listed in
  DICOM PS3.16; checked in the FHIR rendering of the DICOM context groups,
  bvdh/dicom-terminology-in-fhir ``ValueSet-dicom-cid-7603-Vertebra.fsh``);
- "Vertebra", "Vertebral body", the spine regions and the "Anatomical Structure"
  category: the codes ``slicer_logic`` used before per-level segments (SlicerTotalSegmentator's
  and Slicer's DICOM master lists).

Decisions: a whole-vertebra segment's type is its level's code (e.g. SCT 36470004 "L3
vertebra") in its spine region; a vertebral-body segment's type is "Vertebral body" with
its level's vertebra as the anatomic region (the body of the L3 vertebra) — no per-level
body code was found that could be verified, so none is invented. S1/T13/L6 have no code in
CID 7603 and keep the generic type. Slicer's own terminology colours for vertebrae could
not be checked here (slicer-core ships no ``.term.json``), so colours come from
``levels.level_color``, not from Slicer's list.
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

# DICOM CID 7603 "Vertebra" (SNOMED CT).
LEVEL_CODES = {
    "C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002", "C5": "36978003", "C6": "36054005", "C7": "87391001",
    "T1": "64864005", "T2": "53733008", "T3": "1626008", "T4": "73071006", "T5": "56401006", "T6": "45296009", "T7": "62487009",
    "T8": "11068009", "T9": "82687006", "T10": "7610001", "T11": "12989004", "T12": "23215003",
    "L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
}  # fmt: skip


def level_code(level: str) -> tuple[str, str, str] | None:
    """("SCT", code, "L3 vertebra") for a level of CID 7603, else None."""
    return ("SCT", LEVEL_CODES[level], f"{level} vertebra") if level in LEVEL_CODES else None


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
        return serialize_terminology(ANATOMICAL_STRUCTURE, code, region=SPINE_REGIONS[level[0]])
    if "vertebral bod" in text:
        type_ = VERTEBRAL_BODY
    elif "vertebra" in text:
        type_ = VERTEBRA
    else:
        type_ = VERTEBRAL_COLUMN
    levels = {match.upper() for match in re.findall(r"\b([CTLctl])\d{1,2}\b", str(label.get("covers", "")))}
    region = SPINE_REGIONS[levels.pop()] if len(levels) == 1 else EMPTY_CODE
    return serialize_terminology(ANATOMICAL_STRUCTURE, type_, region=region)
