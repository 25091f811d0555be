"""What a run leaves on disk for others: the distilled-set format (save, load, legacy
import, challenge export) and its image grids.
"""
