"""Measuring steering: answer a problem set at several alphas, grade, compare to alpha 0."""
