"""The machinery every stage shares: progress lines, the output-folder lock, the
record of finished runs, device names.
"""
