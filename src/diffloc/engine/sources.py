"""Where a restore reads its clean value (a constant the CLI offers without importing torch)."""

#: ``same-latent``: the clean-text value on the restored run's own latent (the default); ``trajectory``: the
#: clean run's own activation, on the clean trajectory's latent (see :class:`diffloc.engine.interventions.Restore`)
RESTORE_SOURCES = ("same-latent", "trajectory")
