"""`make bench` (run.py): figures 1-6, direct beside proxied, and compare.py for two runs."""
