"""The cost of one call: CPU per call, the floor of the architecture, ZeroMQ, py-spy."""
