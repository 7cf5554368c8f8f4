"""The `rdsgate` command line (also `kubectl rdsgate`): one module per command group."""
