"""Headless training of the networks the VerdiffSegment module runs (same classes, same slicing)."""
