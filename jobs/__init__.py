"""warmstart jobs: one entry point per arrow of the nightly flow (see DESIGN.md)."""
