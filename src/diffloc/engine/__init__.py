"""Framework code: scoped hooks, batch layout, interventions and seeded batched generation."""
