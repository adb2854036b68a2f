"""Figures for people: image sheets drawn with PIL (`sheets`) and curves drawn with matplotlib (`curves`).

The one home of drawing: the training, inversion, editing and benchmark code hands arrays and numbers here.
"""
