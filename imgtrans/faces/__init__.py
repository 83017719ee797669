"""Faces: detection, landmarks, alignment, eye masks and eye state."""
