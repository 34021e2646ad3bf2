"""Hardware: neuromorphic chip profiles and energy estimates."""
