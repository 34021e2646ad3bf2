"""Spiking EP on Norse's neurons: neurons, spike propagation (dense / event), the simulator of the
three phases, SynOp counts, the local learning rule on spike rates, and pictures of spiking activity."""
