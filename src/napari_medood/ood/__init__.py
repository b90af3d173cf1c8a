"""Post-hoc sample-level OOD detection on frozen features (MedOODFlow and its baselines).

``heads`` (the flow and MSP, energy, ReAct, MDS, ViM, KNN behind one fit/confidence
interface), ``flow`` (the RealNVP, built with normflows), ``reference`` (percentiles among
the in-distribution scans), ``metrics`` (AUROC, FPR@95, AUPR-In/Out), ``corruptions``
(MedOODFlow's transformation shifts, with TorchIO).
"""
