"""What the measurements share: the fake runtime, the load clients, the rig, /proc."""
