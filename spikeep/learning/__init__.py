"""Learning: EP estimators (one formula each, by parameter name), EP on the rate dynamics, BPTT,
the step-wise EP/BPTT (GDU) check, and chip-like plasticity applied after the optimizer."""
