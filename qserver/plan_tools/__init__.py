"""Pure helpers about plans and devices, shared by the queue service and the environment."""
