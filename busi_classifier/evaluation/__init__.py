"""Evaluation: metrics, bootstrap intervals, calibration, scoring an exported model, figures."""
