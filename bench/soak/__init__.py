"""`make soak` (run.py): pod churn through criproxy with a fault a minute."""
