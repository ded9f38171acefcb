"""The environment process: loads the startup code and runs plans on its RunEngine."""
