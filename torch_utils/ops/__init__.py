"""Custom ops with a pure-PyTorch reference path and a CUDA path behind one function."""
