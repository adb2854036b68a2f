"""Overparameterized StyleGAN2: neural network building blocks (ops, persistence, misc)."""
