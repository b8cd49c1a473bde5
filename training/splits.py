"""Seeded splits by subject: no subject (patient) is ever in two splits.

Algorithm (the bundled X-ray recipe's, generalised): subjects named explicitly go to
their split; the rest, sorted, are permuted with ``numpy.random.default_rng(seed)``; the
first ``floor(n * validation)`` go to validation, the next ``floor(n * test)`` to test,
the remainder to training. Every list is written sorted, with the seed and fractions,
as ``split.json`` beside the run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

# The MR recipe's held-out subjects, fixed: VB3_17, VB3_18 and VB3_20 of the first 20 (there is
# no VB3_19), and 5 of the 20 subjects added later (VB3_32..52, no VB3_33), drawn once with
# numpy.random.default_rng(35).permutation over the sorted new subjects. Every MR recipe model
# is validated on these 8 and trains on the other 32.
MR_VALIDATION = ["VB3_17", "VB3_18", "VB3_20", "VB3_35", "VB3_42", "VB3_48", "VB3_49", "VB3_51"]


def split_subjects(
    subjects,
    seed: int = 35,
    validation: float = 0.1,
    test: float = 0.0,
    validation_subjects=(),
    test_subjects=(),
) -> dict:
    """{"train": [...], "validation": [...], "test": [...], "seed": ..., ...} over unique subjects."""
    subjects = sorted(set(subjects))
    named = {"validation": sorted(set(validation_subjects)), "test": sorted(set(test_subjects))}
    unknown = sorted((set(named["validation"]) | set(named["test"])) - set(subjects))
    if unknown:
        raise ValueError(f"split names subjects that are not in the data: {', '.join(unknown)}")
    both = sorted(set(named["validation"]) & set(named["test"]))
    if both:
        raise ValueError(f"subjects named for both validation and test: {', '.join(both)}")
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise ValueError(f"split fractions must be in [0, 1) and sum below 1, got validation={validation} test={test}")
    rest = [s for s in subjects if s not in named["validation"] and s not in named["test"]]
    order = np.random.default_rng(seed).permutation(len(rest))
    n_validation = 0 if named["validation"] else math.floor(len(rest) * validation + 1e-9)
    n_test = 0 if named["test"] else math.floor(len(rest) * test + 1e-9)
    validation_set = named["validation"] + [rest[i] for i in order[:n_validation]]
    test_set = named["test"] + [rest[i] for i in order[n_validation : n_validation + n_test]]
    train_set = [rest[i] for i in order[n_validation + n_test :]]
    split = {
        "train": sorted(train_set),
        "validation": sorted(validation_set),
        "test": sorted(test_set),
        "seed": seed,
        "fractions": {"validation": validation, "test": test},
    }
    check_disjoint(split)
    if not split["train"]:
        raise ValueError(f"the split leaves no training subject ({len(subjects)} subjects in all)")
    return split


def check_disjoint(split: dict) -> None:
    """Raise if a subject appears in two of train / validation / test."""
    names = ("train", "validation", "test")
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = set(split.get(a, [])) & set(split.get(b, []))
            if shared:
                raise ValueError(f"subjects in both {a} and {b}: {', '.join(sorted(shared))}")


def write_split(split: dict, run_dir: Path) -> Path:
    path = Path(run_dir) / "split.json"
    path.write_text(json.dumps(split, indent=1))
    return path
