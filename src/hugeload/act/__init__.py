"""The only code with side effects: one module per resource (pools, mounts, boot
configuration, the model store).  Every change is recorded so it can be undone."""
