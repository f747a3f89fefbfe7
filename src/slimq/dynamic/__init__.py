"""Dynamic post-training quantization: weights ahead of time, activations (optionally) at run time."""
