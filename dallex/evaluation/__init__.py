"""Evaluation: the shapes alignment checker, FID/KID with Flax InceptionV3, R-precision,
and ``evaluate`` that runs them all on a split."""
