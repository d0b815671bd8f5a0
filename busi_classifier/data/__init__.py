"""Datasets: the BUSI folder reader, synthetic data, the duplicate audit and its figures, splitting."""
