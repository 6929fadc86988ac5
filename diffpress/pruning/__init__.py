"""Structured pruning: attention heads, feed-forward neurons and ResNet channel groups, chosen by a mask
learned on the sampling trajectory (or a one-shot baseline), then physically removed.

units.py finds the prunable groups; gates.py gates them; trajectory.py and learn.py fit the gates
end to end; importance.py holds the baselines; select.py binarizes under a parameter or MAC budget;
slicing.py removes the units (and reshapes a skeleton at load time); prune.py runs a stage.
"""
from ..prune_stage import Cost, GateKind, LearnOptions, Method, PruneStage, Scope
from .prune import PruneResult, prune_denoiser
from .slicing import apply_structure
from .units import PruneGroup, UnitKind, find_groups

__all__ = ["Cost", "GateKind", "LearnOptions", "Method", "PruneGroup", "PruneResult", "PruneStage", "Scope", "UnitKind",
           "apply_structure", "find_groups", "prune_denoiser"]
