"""The rate-coded core: activations, interactions (the terms of Phi), the network and its relaxation."""
