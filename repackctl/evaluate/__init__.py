"""Evaluation: image sets, references and their statistics, generative scores, recon and probe."""
