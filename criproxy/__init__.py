"""criproxy: one CRI endpoint for kubelet in front of several container runtimes."""
