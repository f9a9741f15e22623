"""Quantification: per-segment statistics of a segmentation on its source image, and segmentation evaluation."""
