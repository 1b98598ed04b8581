"""Suite definitions (TOML), installed as `altbench.suites` and validated on load."""
