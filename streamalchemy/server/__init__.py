"""The daemon's decisions and its HTTP face: the per-name lifecycle, routes, metrics.

Decides what runs; `supervision` carries it out.
"""
