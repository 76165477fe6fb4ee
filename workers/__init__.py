"""criproxy workers: one process per runtime, holding its gRPC connection."""
