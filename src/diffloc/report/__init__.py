"""Presentation: plots and reports consume typed results; they never compute them."""
