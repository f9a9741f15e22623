"""nnU-Net: the model store (install, list, resolve) and the inference runner."""
