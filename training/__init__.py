"""Headless training of the networks the VerdiffSegment module runs (same classes, same slicing).

``python -m training train|export|evaluate`` (``__main__``; see ``docs/training.md``). Modules:
``configs`` the bundled recipes and TOML run configs; ``labels`` source ids -> levels -> product
labels; ``datasets`` the AASCE and labelled-volume adapters; ``splits`` seeded splits by subject;
``augment`` the papers' augmentation; ``sampler`` augmented crops, sharded per rank; ``train`` the
loop; ``distributed`` torchrun/DDP; ``checkpoint`` atomic, bit-exact resume; ``logs`` CSV,
TensorBoard, progress; ``evaluate`` Dice/IoU/HD95/NSD through ``pipeline.segment``; ``export``
weights and model cards.
"""
