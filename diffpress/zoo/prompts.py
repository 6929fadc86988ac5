"""The prompts of `builtin:digits-flux`: eight phrasings of each digit's class (plain Python, no torch)."""
from __future__ import annotations

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = ("a handwritten {d}", "the digit {name}", "a handwritten {name}", "the number {d}", "digit {d}",
             "a drawing of the digit {name}", "{name}", "the handwritten number {name}")


def prompt_for(label: int, phrasing: int = 0) -> str:
    """The prompt for class `label` in phrasing `phrasing` (any integer: taken modulo the phrasings)."""
    return PHRASINGS[phrasing % len(PHRASINGS)].format(d=label, name=NAMES[label])


def calibration_prompts() -> tuple[str, ...]:
    """Every phrasing of every class, classes first (so that any prefix covers the classes evenly)."""
    return tuple(prompt_for(label, phrasing) for phrasing in range(len(PHRASINGS)) for label in range(10))
