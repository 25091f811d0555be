"""Trajectory matching, one recipe: MTT, FTD, DATM, M-DATM and PAD as presets of one loop.

The loop (:mod:`.distill`) with its config (:mod:`.config`), state (:mod:`.state`) and
outputs (:mod:`.outputs`), the pipeline that runs experts -> distill -> evaluate
(:mod:`.pipeline`), resume state (:mod:`.checkpoint`), repair of a run folder
(:mod:`.repair`), the method presets (:mod:`.presets`) and the memory estimate
(:mod:`.memory`).
"""
