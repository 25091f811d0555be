"""Evaluation protocols: train fresh networks on a set and test them on real data
(classic, the ECCV-2024 challenge, DD-Ranking), the reference baselines and DD-Ranking's
scores. The protocols are objects in one registry, ``protocols.PROTOCOLS`` (name -> protocol).
"""
