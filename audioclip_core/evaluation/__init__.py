"""Evaluation: zero-shot and fine-tuned classification, retrieval, the paper's tables, plots."""
