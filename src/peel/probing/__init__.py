"""Is the forget knowledge still in the representations? Linear probes and the logit lens per layer.

tasks.py (lm-eval tasks -> questions), features.py (one pass: pooled hidden states and lens scores
per layer), linear.py (seeded split, logistic-regression probes, chance), lens.py (final norm +
unembedding at every layer), record.py (probe.json), runner.py (targets -> probe.json + probe.png).
Kept import-light: `peel report` reads probe.json through record.py without loading torch.
"""
