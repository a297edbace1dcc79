"""Evaluation: of trained segmentation models and of frozen backbone features."""
