"""A node's view: idle CPU, registration, restarts, criproxy beside the Go original."""
