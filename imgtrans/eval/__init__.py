"""Offline quality measures for trained models: domain judges, feature-space distances, reports."""
