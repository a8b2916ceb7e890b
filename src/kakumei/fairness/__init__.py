"""Fair sharing of one machine: request costs and the virtual-counter schedule.

Pure Python (no torch, no SQL) so that the store, the server and simulations share it.
"""
