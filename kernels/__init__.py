"""Fused kernels (Triton) with pure-torch references beside them. Imported as ``spulctl.kernels``."""
