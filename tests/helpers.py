"""Checks shared by several test modules (importable: pytest puts this folder on sys.path)."""

TOLERANCE = 0.02  # every strategy's FLOPs ratio lies in [target - TOLERANCE, target]


def in_budget(ratio: float, target: float) -> bool:
    return target - TOLERANCE <= ratio <= target + 1e-12
